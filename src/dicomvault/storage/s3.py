"""S3 storage: objects in a bucket of AWS S3 or of an S3-compatible server, through boto3.

An object's name is the configured prefix followed by the archive's storage
key, such as ``archive/3f/a2/3fa2...c1.dcm``. The keys are the same opaque,
random names as in filesystem storage, for three reasons. The archive
writes a replacement under a new key before the index commits it, so the
replaced object stays intact if indexing fails. Object names are neither
encrypted at rest nor by server-side encryption, and UIDs can identify
patients, so names derived from them would show more than opaque keys.
Random leading characters also spread requests over the bucket's key space.

Credentials come from boto3's default chain: the AWS environment
variables, the shared credentials and config files (AWS_PROFILE), or the
instance or container role. No dicomvault setting contains them.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from dicomvault.config import StorageSettings
from dicomvault.storage.base import StorageError, StorageFullError, check_stored_key
from dicomvault.storage.in_bucket import (
    in_bucket_exists,
    is_in_bucket_key,
    is_indexed_in_place,
    open_in_bucket,
    read_in_bucket_prefix,
)
from dicomvault.storage.in_place import in_place_path
from dicomvault.storage.s3_reader import (
    NOT_FOUND_CODES,
    error_code,
    fetch_range,
    object_exists,
    open_object,
)

if TYPE_CHECKING:
    from botocore.awsrequest import AWSPreparedRequest
    from types_boto3_s3 import S3Client

LOGGER = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 60.0
# Connections kept open to the endpoint; beyond it, connections are opened
# per request. The default of dimse.max_associations is 32.
MAX_POOL_CONNECTIONS = 32
MAX_PARTS = 10_000  # S3's limit of parts in one multipart upload
# Multipart uploads younger than this are never aborted as left over,
# because another server that shares the bucket may still be uploading them.
STALE_UPLOAD_SECONDS = 24 * 3600.0
# Error codes of a full or over-quota store: S3-compatible servers such as
# MinIO and Ceph send them (AWS S3 has no size limit).
FULL_CODES = frozenset({"QuotaExceeded", "XMinioStorageFull", "XMinioAdminBucketQuotaExceeded"})


def new_s3_client(settings: StorageSettings) -> S3Client:
    """Return an S3 client for the endpoint, region and retry settings of ``settings``.

    Empty settings leave the choice to boto3: AWS_ENDPOINT_URL_S3 or
    AWS_ENDPOINT_URL, AWS_REGION or AWS_DEFAULT_REGION, and the profile.
    """
    # Typed Any: the stubs want literals, and the settings were checked against them.
    retries: Any = {
        "mode": settings.s3_retry_mode,
        "total_max_attempts": settings.s3_max_attempts,
    }
    s3_options: Any = {"addressing_style": settings.s3_addressing_style}
    config = Config(
        region_name=settings.s3_region or None,
        retries=retries,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        max_pool_connections=MAX_POOL_CONNECTIONS,
        s3=s3_options,
    )
    session = boto3.session.Session()
    client: S3Client = session.client(
        "s3", endpoint_url=settings.s3_endpoint_url or None, config=config
    )
    client.meta.events.register("before-send.s3.PutObject", _remove_expect_continue)
    return client


def _remove_expect_continue(request: AWSPreparedRequest, **kwargs: Any) -> None:
    """Send a PutObject request's body without waiting for "100 Continue".

    botocore 1.44 adds "Expect: 100-continue" to every PutObject request,
    so each PUT waits one round trip to the endpoint before it sends the
    object. The objects sent in one PUT are smaller than
    storage.s3_part_size (16 MiB by default), so sending the body of a PUT
    that is then rejected wastes less than one round trip on every store
    does. Multipart parts keep the header. The header is not signed, so
    removing it after signing is safe.
    """
    # Deleting a header that is not there is no error.
    del request.headers["Expect"]


class S3Storage:
    """Stores each object in an S3 bucket under the configured prefix.

    ``put`` sends an object below ``storage.s3_part_size`` in one PUT, and a
    larger one as a multipart upload. S3 shows an object only once its PUT
    or the completion of its upload succeeded, and a failed upload is
    aborted, so a failure leaves no object under the key. ``open`` reads by
    ranged GET requests (see :mod:`dicomvault.storage.s3_reader`).

    Files indexed in place (``inplace:`` keys) are opened from the local
    file system, and objects indexed in place in a bucket (``inbucket:``
    keys, see :mod:`dicomvault.storage.in_bucket`) through this storage's
    client. Neither is ever written or deleted.

    Parameters
    ----------
    settings : StorageSettings
        The bucket, prefix, endpoint, encryption and retry settings.
    client : S3Client, optional
        The client to use; by default one built by :func:`new_s3_client`.
    """

    def __init__(self, settings: StorageSettings, client: S3Client | None = None) -> None:
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.endpoint_url = settings.s3_endpoint_url
        self.part_size = settings.s3_part_size
        self.client = client if client is not None else new_s3_client(settings)
        self.min_stale_upload_age = STALE_UPLOAD_SECONDS
        # Keyword arguments of every request that creates an object.
        self._encryption: dict[str, Any] = {}
        if settings.s3_server_side_encryption:
            self._encryption["ServerSideEncryption"] = settings.s3_server_side_encryption
        if settings.s3_kms_key_id:
            self._encryption["SSEKMSKeyId"] = settings.s3_kms_key_id

    @property
    def location(self) -> str:
        """The bucket and prefix as an s3:// URL, for messages."""
        return f"s3://{self.bucket}/{self.prefix}"

    def describe(self) -> str:
        """Return a one-line description for logs: bucket, prefix, endpoint; no credentials."""
        endpoint = self.endpoint_url or f"AWS region {self.client.meta.region_name}"
        encryption = self._encryption.get("ServerSideEncryption", "bucket default")
        return f"S3 {self.location} at {endpoint}, server-side encryption {encryption}"

    def object_name(self, key: str) -> str:
        """Return the name in the bucket of the object of ``key``.

        Raises
        ------
        ValueError
            If ``key`` is not a stored key (see :func:`check_stored_key`).
        """
        check_stored_key(key)
        return self.prefix + key

    def check_bucket(self) -> None:
        """Check that the bucket exists and the credentials may use it.

        Raises
        ------
        StorageError
            If the endpoint cannot be reached, no credentials are found, the
            bucket does not exist or access to it is denied. The message
            names the cause and the setting to change.
        """
        where = f"S3 bucket {self.bucket} at {self.endpoint_url or 'AWS'}"
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise StorageError(
                f"Cannot use {where}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, choose a profile with AWS_PROFILE, or run with an "
                "instance or container role"
            ) from None
        except ClientError as exc:
            code = error_code(exc)
            if code in ("404", "NoSuchBucket", "NotFound"):
                reason = "the bucket does not exist; create it or correct storage.s3_bucket"
            elif code in ("403", "AccessDenied", "Forbidden"):
                reason = (
                    "access is denied; check the AWS credentials and the bucket's policy, "
                    "which must allow s3:ListBucket, s3:GetObject, s3:PutObject and "
                    "s3:DeleteObject"
                )
            elif code in ("301", "PermanentRedirect"):
                reason = "the bucket is in another region; set storage.s3_region to its region"
            else:
                reason = f"{exc}"
            raise StorageError(f"Cannot use {where}: {reason}") from None
        except BotoCoreError as exc:
            raise StorageError(
                f"Cannot use {where}: {exc}; check storage.s3_endpoint_url and the network"
            ) from None

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        """Upload the chunks as the object of ``key``; return the size in bytes.

        Memory use is at most one part (``storage.s3_part_size``) beyond
        the chunks themselves.

        Raises
        ------
        ValueError
            If ``key`` is an in-place or in-bucket key, or not a stored key.
        StorageFullError
            If an S3-compatible server reports that it or the bucket's quota is full.
        StorageError
            On any other failure, after the SDK's retries.
        """
        if is_indexed_in_place(key):
            raise ValueError(f"Cannot write {key}: in-place files are never modified")
        name = self.object_name(key)
        upload: _MultipartUpload | None = None
        buffer = bytearray()
        size = 0
        try:
            for chunk in chunks:
                view = memoryview(chunk).cast("B")
                size += len(view)
                while view:
                    count = min(len(view), self.part_size - len(buffer))
                    buffer += view[:count]
                    view = view[count:]
                    if len(buffer) == self.part_size:
                        if upload is None:
                            upload = _MultipartUpload(self, key, name)
                        upload.add_part(buffer)
                        buffer = bytearray()
            if upload is None:
                self.client.put_object(
                    Bucket=self.bucket, Key=name, Body=bytes(buffer), **self._encryption
                )
            else:
                if buffer:
                    upload.add_part(buffer)
                upload.complete()
        except (ClientError, BotoCoreError) as exc:
            if upload is not None:
                upload.abort()
            raise _write_error(exc, key, f"s3://{self.bucket}/{name}") from exc
        except BaseException:
            if upload is not None:
                upload.abort()
            raise
        LOGGER.debug("Stored %s as s3://%s/%s, %d bytes", key, self.bucket, name, size)
        return size

    def open(self, key: str) -> BinaryIO:
        """Open the object of ``key`` for reading; return a seekable stream.

        Raises
        ------
        FileNotFoundError
            If no object has this key.
        StorageError
            If the object cannot be read.
        """
        path = in_place_path(key)
        if path is not None:
            return path.open("rb")
        if is_in_bucket_key(key):
            return open_in_bucket(self.client, key)
        return open_object(self.client, self.bucket, self.object_name(key), key)

    def read_prefix(self, key: str, size: int) -> bytes:
        """Return the first ``size`` bytes of the object of ``key``, with one request.

        Raises
        ------
        FileNotFoundError, StorageError
            As :meth:`open`.
        """
        path = in_place_path(key)
        if path is not None:
            with path.open("rb") as file:
                return file.read(size)
        if is_in_bucket_key(key):
            return read_in_bucket_prefix(self.client, key, size)
        return fetch_range(self.client, self.bucket, self.object_name(key), key, 0, size)

    def plain_path(self, key: str) -> Path | None:
        """Return the path of an in-place file; None for objects, which are remote."""
        return in_place_path(key)

    def delete(self, key: str) -> None:
        """Remove the object of ``key``; a missing object is not an error.

        An in-place or in-bucket key is left alone. A failure is logged and
        not raised, as filesystem storage does, because the index no longer
        lists the object.
        """
        if is_indexed_in_place(key):
            LOGGER.debug("Not deleting %s: it was indexed in place", key)
            return
        name = self.object_name(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=name)
        except (ClientError, BotoCoreError) as exc:
            LOGGER.warning("Cannot delete s3://%s/%s (key %s): %s", self.bucket, name, key, exc)

    def exists(self, key: str) -> bool:
        """Return whether the object of ``key`` exists.

        Raises
        ------
        StorageError
            If S3 cannot tell, such as when access is denied.
        """
        path = in_place_path(key)
        if path is not None:
            return path.is_file()
        if is_in_bucket_key(key):
            return in_bucket_exists(self.client, key)
        return object_exists(self.client, self.bucket, self.object_name(key))

    def iter_keys(self) -> Iterator[str]:
        """Yield the key of every stored object under the prefix, in name order.

        Reserved names, whose parts start with '.', are skipped, such as
        the key record of encrypted storage.

        Raises
        ------
        StorageError
            If the bucket cannot be listed.
        """
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix) :]
                    if key and not any(part.startswith(".") for part in key.split("/")):
                        yield key
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"Cannot list {self.location}: {exc}") from exc

    def reserved_location(self, name: str) -> str:
        """Return the s3:// URL of the reserved object ``name``, such as the key record."""
        return f"s3://{self.bucket}/{self.prefix}{name}"

    def read_reserved(self, name: str) -> bytes | None:
        """Return the contents of the reserved object ``name``; None if there is none.

        Raises
        ------
        StorageError
            If the object exists but cannot be read.
        """
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)
            data: bytes = response["Body"].read()
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND_CODES:
                return None
            raise StorageError(f"Cannot read {self.reserved_location(name)}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"Cannot read {self.reserved_location(name)}: {exc}") from exc
        return data

    def write_reserved(self, name: str, data: bytes) -> None:
        """Replace the reserved object ``name`` with ``data`` in one PUT.

        Raises
        ------
        StorageError
            If the upload fails.
        """
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.prefix + name, Body=data, **self._encryption
            )
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"Cannot write {self.reserved_location(name)}: {exc}") from exc

    def delete_reserved(self, name: str) -> None:
        """Remove the reserved object ``name``; a missing object is not an error.

        Raises
        ------
        StorageError
            If the deletion fails.
        """
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + name)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"Cannot delete {self.reserved_location(name)}: {exc}") from exc

    def remove_temporary_files(self, older_than: float = 0.0) -> int:
        """Abort multipart uploads under the prefix that interrupted writes left; return how many.

        Only uploads older than both ``older_than`` seconds and
        ``min_stale_upload_age`` (one day) are aborted, because other servers
        that share the bucket may be uploading now. A failure is logged, not
        raised. A bucket lifecycle rule that aborts incomplete multipart
        uploads does the same job.
        """
        age = max(older_than, self.min_stale_upload_age)
        cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=age)
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] > cutoff:
                        continue
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        except (ClientError, BotoCoreError) as exc:
            LOGGER.warning("Cannot abort the multipart uploads left in %s: %s", self.location, exc)
        if aborted:
            LOGGER.warning(
                "Aborted %d multipart uploads left in %s by interrupted writes",
                aborted,
                self.location,
            )
        return aborted

    def free_bytes(self) -> int | None:
        """Return None: S3 reports no free space."""
        return None


class _MultipartUpload:
    """One multipart upload of an object in progress."""

    def __init__(self, storage: S3Storage, key: str, name: str) -> None:
        self.storage = storage
        self.key = key
        self.name = name
        self.parts: list[dict[str, Any]] = []
        self.started = time.monotonic()
        response = storage.client.create_multipart_upload(
            Bucket=storage.bucket, Key=name, **storage._encryption
        )
        self.upload_id = response["UploadId"]
        LOGGER.debug("Started multipart upload %s of %s", self.upload_id, key)

    def add_part(self, data: bytearray) -> None:
        """Upload the next part.

        Raises
        ------
        StorageError
            If the object would need more than MAX_PARTS parts.
        """
        number = len(self.parts) + 1
        if number > MAX_PARTS:
            raise StorageError(
                f"Cannot store {self.key}: it is larger than {MAX_PARTS} parts of "
                f"{self.storage.part_size} bytes; raise storage.s3_part_size"
            )
        response = self.storage.client.upload_part(
            Bucket=self.storage.bucket,
            Key=self.name,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=bytes(data),
        )
        self.parts.append({"ETag": response["ETag"], "PartNumber": number})

    def complete(self) -> None:
        """Join the parts into the object, which becomes visible now."""
        self.storage.client.complete_multipart_upload(
            Bucket=self.storage.bucket,
            Key=self.name,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self.parts},  # type: ignore[typeddict-item]
        )
        LOGGER.debug(
            "Completed multipart upload of %s: %d parts in %.1f s",
            self.key,
            len(self.parts),
            time.monotonic() - self.started,
        )

    def abort(self) -> None:
        """Abort the upload, so that its parts are removed; a failure is logged, not raised."""
        try:
            self.storage.client.abort_multipart_upload(
                Bucket=self.storage.bucket, Key=self.name, UploadId=self.upload_id
            )
        except (ClientError, BotoCoreError) as exc:
            LOGGER.warning(
                "Cannot abort multipart upload %s of %s: %s; 'dicomvault serve' aborts it "
                "at a start a day or more later",
                self.upload_id,
                self.key,
                exc,
            )


def _write_error(exc: Exception, key: str, where: str) -> StorageError:
    if isinstance(exc, ClientError) and error_code(exc) in FULL_CODES:
        return StorageFullError(f"No space left to store {key} at {where}: {exc}")
    return StorageError(f"Cannot write {key} to {where}: {exc}")
