"""Storage keys of objects indexed in place in an S3 bucket, and the client that reads them.

An object indexed in place keeps its bucket and name, so its key is both
after the prefix ``inbucket:``, as in ``inbucket:scans/2024/study1/img001.dcm``
for the object ``img001.dcm`` under ``2024/study1/`` of bucket ``scans``.
Bucket names never contain '/', so the first '/' ends the bucket name.
Stored keys never contain ':', so they cannot be confused with these keys
or with in-place keys (:mod:`dicomvault.storage.in_place`).

This module imports nothing heavy: boto3 and botocore are imported by the
functions that read objects.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, BinaryIO

from dicomvault.config import StorageSettings
from dicomvault.storage.in_place import is_in_place_key

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

IN_BUCKET_PREFIX = "inbucket:"

_clients: dict[tuple[int, StorageSettings], S3Client] = {}
_clients_lock = threading.Lock()


def in_bucket_key(bucket: str, key: str) -> str:
    """Return the storage key that references the object ``key`` of ``bucket``.

    Raises
    ------
    ValueError
        If ``bucket`` is empty or contains '/', or ``key`` is empty.
    """
    if not bucket or "/" in bucket:
        raise ValueError(f"Invalid bucket name {bucket!r}: expected a non-empty name without '/'")
    if not key:
        raise ValueError(f"An object indexed in bucket {bucket} needs a non-empty key")
    return f"{IN_BUCKET_PREFIX}{bucket}/{key}"


def in_bucket_object(key: str) -> tuple[str, str] | None:
    """Return the bucket and object key an in-bucket key references, or None for other keys.

    Raises
    ------
    ValueError
        If ``key`` starts with ``inbucket:`` but names no bucket or no object.
    """
    if not key.startswith(IN_BUCKET_PREFIX):
        return None
    bucket, separator, name = key[len(IN_BUCKET_PREFIX) :].partition("/")
    if not bucket or not separator or not name:
        raise ValueError(
            f"Invalid in-bucket storage key {key!r}: expected 'inbucket:BUCKET/OBJECT-KEY'"
        )
    return bucket, name


def is_in_bucket_key(key: str) -> bool:
    """Return whether ``key`` references an object indexed in place in a bucket."""
    return key.startswith(IN_BUCKET_PREFIX)


def is_indexed_in_place(key: str) -> bool:
    """Return whether ``key`` references a file or an object outside the archive's storage.

    Such files and objects were indexed where they are. The archive reads
    them but never writes or deletes them.
    """
    return is_in_place_key(key) or is_in_bucket_key(key)


def source_client(settings: StorageSettings) -> S3Client:
    """Return the S3 client that reads source buckets, one per process and settings.

    The client has the endpoint, region and retry settings of the archive's
    S3 storage (:func:`dicomvault.storage.s3.new_s3_client`), even when the
    archive stores on the filesystem. Credentials come from boto3's default
    chain. A process started by fork builds its own client rather than use
    the parent's connections.
    """
    # NOTE: the settings reject storage.s3_* values unless storage.backend is
    # s3, so an archive on the filesystem reaches source buckets through
    # boto3's defaults only: AWS_ENDPOINT_URL_S3, AWS_REGION and the profile.
    cache_key = (os.getpid(), settings)
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is None:
            # Imported here: boto3 takes a noticeable time to import.
            from dicomvault.storage.s3 import new_s3_client

            client = _clients[cache_key] = new_s3_client(settings)
    return client


def open_in_bucket(client: S3Client, key: str) -> BinaryIO:
    """Open the object of the in-bucket key ``key``; return a seekable stream.

    The object is read by ranged GET requests: opening it fetches the first
    block only, and each read fetches the blocks it needs (see
    :mod:`dicomvault.storage.s3_reader`).

    Raises
    ------
    ValueError
        If ``key`` is not an in-bucket key.
    FileNotFoundError
        If the object no longer exists.
    StorageError
        If the object cannot be read.
    """
    from dicomvault.storage.s3_reader import open_object

    bucket, name = _split(key)
    return open_object(client, bucket, name, key)


def read_in_bucket_prefix(client: S3Client, key: str, size: int) -> bytes:
    """Return the first ``size`` bytes of the object of the in-bucket key ``key``.

    Raises
    ------
    ValueError, FileNotFoundError, StorageError
        As :func:`open_in_bucket`.
    """
    from dicomvault.storage.s3_reader import fetch_range

    bucket, name = _split(key)
    return fetch_range(client, bucket, name, key, 0, size)


def in_bucket_exists(client: S3Client, key: str) -> bool:
    """Return whether the object of the in-bucket key ``key`` exists, by a HEAD request.

    Raises
    ------
    ValueError
        If ``key`` is not an in-bucket key.
    StorageError
        If S3 cannot tell, such as when access is denied.
    """
    from dicomvault.storage.s3_reader import object_exists

    bucket, name = _split(key)
    return object_exists(client, bucket, name)


def _split(key: str) -> tuple[str, str]:
    location = in_bucket_object(key)
    if location is None:
        raise ValueError(f"Not an in-bucket storage key: {key!r}")
    return location
