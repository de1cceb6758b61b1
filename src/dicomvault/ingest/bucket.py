"""Objects of an S3 bucket as the source of an indexing task: URLs, listing and reading.

A bucket and prefix are written as a URL, ``s3://bucket/prefix``, and one
object as ``s3://bucket/key``. Object URLs are the paths of the file jobs
of a bucket. The objects are reached with the S3 client of
:func:`source_client`, which has the endpoint, region and retry settings
of the archive's S3 storage and the credentials of boto3's default chain.

This module imports nothing heavy: boto3 and botocore are imported by the
functions that send requests.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from dicomvault.storage.in_bucket import source_client

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

LOGGER = logging.getLogger(__name__)

__all__ = [
    "BucketError",
    "BucketLocation",
    "ObjectChangedError",
    "ObjectEntry",
    "ObjectNotFoundError",
    "is_bucket_url",
    "list_objects",
    "object_url",
    "parse_bucket_url",
    "read_object",
    "source_client",
    "split_object_url",
]

SCHEME = "s3://"
# ListObjectsV2 returns at most 1000 keys per request.
MAX_PAGE_SIZE = 1000
# The rules of S3 for bucket names: 3 to 63 lowercase letters, digits, '.'
# and '-', starting and ending with a letter or digit, without two adjacent
# periods, and not formatted as an IP address.
_BUCKET_NAME_CHARACTERS_RE = re.compile(r"[a-z0-9.-]+")
_IP_ADDRESS_RE = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_NO_BUCKET_CODES = frozenset({"NoSuchBucket"})
_ACCESS_DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden"})
_REDIRECT_CODES = frozenset({"PermanentRedirect", "301", "AuthorizationHeaderMalformed"})
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})


class BucketError(OSError):
    """A request to a source bucket failed; the message names the bucket and what to do."""


class ObjectNotFoundError(BucketError):
    """The object does not exist, so it was deleted after the bucket was listed."""


class ObjectChangedError(BucketError):
    """The object's ETag or size differs from the one the listing gave."""


@dataclasses.dataclass(frozen=True)
class BucketLocation:
    """A bucket and a key prefix in it: the objects an indexing task reads.

    ``prefix`` is compared with object keys as it is, so ``scans/2024``
    also covers ``scans/2024-old/``; an empty prefix covers the whole bucket.
    """

    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        """The location as a URL, ``s3://bucket/prefix``."""
        return f"{SCHEME}{self.bucket}/{self.prefix}"


class ObjectEntry(NamedTuple):
    """One object of a listing: its key, its size in bytes and its ETag without quotes."""

    key: str
    size: int
    etag: str


def is_bucket_url(text: str) -> bool:
    """Return whether ``text`` is meant as a bucket or object URL: whether it starts with s3://."""
    return text.startswith(SCHEME)


def parse_bucket_url(text: str) -> BucketLocation:
    """Parse ``s3://bucket`` or ``s3://bucket/prefix`` into a bucket and prefix.

    The prefix is everything after the first '/' that follows the bucket
    name, kept as given, trailing '/' included. It is empty when the URL
    has no '/' after the bucket name.

    Raises
    ------
    ValueError
        If ``text`` does not start with s3://, or the bucket name breaks
        the S3 naming rules.
    """
    if not is_bucket_url(text):
        raise ValueError(f"Invalid bucket URL {text!r}: expected s3://BUCKET or s3://BUCKET/PREFIX")
    bucket, _, prefix = text[len(SCHEME) :].partition("/")
    problem = _bucket_name_problem(bucket)
    if problem:
        raise ValueError(f"Invalid bucket URL {text!r}: {problem}")
    return BucketLocation(bucket, prefix)


def object_url(bucket: str, key: str) -> str:
    """Return the URL of the object ``key`` of ``bucket``: ``s3://bucket/key``.

    Raises
    ------
    ValueError
        If ``key`` is empty.
    """
    if not key:
        raise ValueError(f"An object of bucket {bucket} needs a non-empty key")
    return f"{SCHEME}{bucket}/{key}"


def split_object_url(url: str) -> tuple[str, str]:
    """Return the bucket and the object key of an object URL ``s3://bucket/key``.

    Raises
    ------
    ValueError
        If ``url`` is not a bucket URL, or names no object key.
    """
    location = parse_bucket_url(url)
    if not location.prefix:
        raise ValueError(f"Invalid object URL {url!r}: expected s3://BUCKET/KEY")
    return location.bucket, location.prefix


def list_objects(
    client: S3Client,
    location: BucketLocation,
    start_after: str = "",
    page_size: int = MAX_PAGE_SIZE,
) -> Iterator[list[ObjectEntry]]:
    """List the objects under ``location`` with ListObjectsV2, one page at a time.

    Objects come in the order of their keys (UTF-8 byte order), starting
    after the key ``start_after``, so a listing that stopped can resume
    after the last key it yielded. Keys that end in '/' are skipped,
    because consoles and tools create them as folder markers. A page with
    nothing else is not yielded.

    Parameters
    ----------
    client : S3Client
        The client of the bucket's endpoint, such as :func:`source_client`.
    location : BucketLocation
        The bucket and the prefix of the keys to list.
    start_after : str, optional
        List only keys after this one; by default, from the first key.
    page_size : int, optional
        The maximum number of keys per request, from 1 to 1000.

    Raises
    ------
    ValueError
        If ``page_size`` is out of range.
    BucketError
        If a request fails: the bucket does not exist, access is denied,
        no credentials are found, or the endpoint cannot be reached. The
        message names the bucket and the way out.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(
            f"'page_size' must be an integer from 1 to {MAX_PAGE_SIZE}, got {page_size!r}"
        )
    arguments: dict[str, Any] = {
        "Bucket": location.bucket,
        "Prefix": location.prefix,
        "MaxKeys": page_size,
    }
    if start_after:
        arguments["StartAfter"] = start_after
    while True:
        try:
            response = client.list_objects_v2(**arguments)
        except (BotoCoreError, ClientError) as exc:
            raise _listing_error(exc, client, location) from exc

        entries = [
            ObjectEntry(item["Key"], int(item["Size"]), _unquote(item.get("ETag", "")))
            for item in response.get("Contents", [])
            if not item["Key"].endswith("/")
        ]
        LOGGER.debug(
            "Listed %d objects of %s after %r",
            len(entries),
            location.url,
            arguments.get("StartAfter", ""),
        )
        if entries:
            yield entries

        if not response.get("IsTruncated"):
            return
        token = response.get("NextContinuationToken", "")
        if not token:
            raise BucketError(
                f"Cannot list {location.url}: the server sent a partial listing without a "
                "continuation token; check that storage.s3_endpoint_url is an S3-compatible server"
            )
        # With a continuation token, the request resumes where the last page ended.
        arguments.pop("StartAfter", None)
        arguments["ContinuationToken"] = token


def read_object(client: S3Client, bucket: str, key: str, etag: str = "", size: int = -1) -> bytes:
    """Return the whole content of an object, which must still have ``etag`` and ``size``.

    ``etag`` is sent in If-Match, so S3 returns the version the listing
    saw, or fails with 412 Precondition Failed. Servers that ignore If-Match are caught by
    comparing the ETag of the response. An empty ``etag`` or a negative
    ``size`` is not checked.

    Raises
    ------
    ObjectChangedError
        If the object's ETag or size differs from ``etag`` or ``size``.
    ObjectNotFoundError
        If the object does not exist.
    BucketError
        If the request fails or the response ends early.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from dicomvault.storage.s3_reader import NOT_FOUND_CODES, error_code

    url = object_url(bucket, key)
    arguments: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if etag:
        arguments["IfMatch"] = f'"{etag}"'
    try:
        response = client.get_object(**arguments)
        try:
            data: bytes = response["Body"].read()
        finally:
            response["Body"].close()
    except ClientError as exc:
        code = error_code(exc)
        if code in _PRECONDITION_CODES:
            raise ObjectChangedError(f"{url} changed after the bucket was listed") from exc
        if code in NOT_FOUND_CODES:
            raise ObjectNotFoundError(f"{url} does not exist") from exc
        raise _request_error(exc, client, bucket, f"Cannot read {url}") from exc
    except (BotoCoreError, OSError) as exc:
        raise _request_error(exc, client, bucket, f"Cannot read {url}") from exc

    received_etag = _unquote(str(response.get("ETag", "")))
    if etag and received_etag and received_etag != etag:
        raise ObjectChangedError(
            f"{url} changed after the bucket was listed: its ETag is {received_etag}, not {etag}"
        )
    if size >= 0 and len(data) != size:
        raise ObjectChangedError(
            f"{url} changed after the bucket was listed: it has {len(data)} bytes, not {size}"
        )
    return data


def _bucket_name_problem(name: str) -> str:
    """Return why ``name`` breaks the S3 naming rules for buckets; empty if it does not."""
    if not name:
        return "no bucket name follows 's3://'"
    if not 3 <= len(name) <= 63:
        return f"the bucket name {name!r} has {len(name)} characters, and S3 allows 3 to 63"
    if not _BUCKET_NAME_CHARACTERS_RE.fullmatch(name):
        return (
            f"the bucket name {name!r} contains characters other than lowercase letters, "
            "digits, '.' and '-'"
        )
    if not (name[0].isalnum() and name[-1].isalnum()):
        return f"the bucket name {name!r} must start and end with a letter or digit"
    if ".." in name:
        return f"the bucket name {name!r} contains two adjacent periods"
    if _IP_ADDRESS_RE.fullmatch(name):
        return f"the bucket name {name!r} is formatted as an IP address"
    return ""


def _unquote(etag: str) -> str:
    return etag.strip('"')


def _listing_error(exc: Exception, client: S3Client, location: BucketLocation) -> BucketError:
    return _request_error(exc, client, location.bucket, f"Cannot list {location.url}")


def _request_error(exc: Exception, client: S3Client, bucket: str, failed: str) -> BucketError:
    """Return the BucketError of a failed request: ``failed``, the cause and the way out."""
    from botocore.exceptions import ClientError, NoCredentialsError

    from dicomvault.storage.s3_reader import error_code

    endpoint = client.meta.endpoint_url
    if isinstance(exc, NoCredentialsError):
        reason = (
            "no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, choose "
            "a profile with AWS_PROFILE, or run with an instance or container role"
        )
    elif isinstance(exc, ClientError):
        code = error_code(exc)
        if code in _NO_BUCKET_CODES:
            reason = (
                f"bucket {bucket} does not exist at {endpoint}; check the bucket name, and "
                "storage.s3_endpoint_url if the bucket is on another server"
            )
        elif code in _ACCESS_DENIED_CODES:
            reason = (
                f"access to bucket {bucket} is denied; the AWS credentials need "
                "s3:ListBucket on the bucket and s3:GetObject on its objects"
            )
        elif code in _REDIRECT_CODES:
            reason = f"bucket {bucket} is in another region; set storage.s3_region to its region"
        else:
            reason = f"{exc}; try again later"
    else:
        reason = f"{exc}; check storage.s3_endpoint_url ({endpoint}) and the network"
    return BucketError(f"{failed}: {reason}")
