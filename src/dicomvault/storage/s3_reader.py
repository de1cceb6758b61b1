"""A seekable reader of one S3 object that fetches only the byte ranges read from it.

Each fetch is a ranged GET of one block, kept in memory until a read leaves
it. Sequential reads double the block size up to READ_BLOCK_MAX, so a
C-MOVE or a whole-instance WADO-RS streams large objects in few requests. A
seek elsewhere starts again at READ_BLOCK_MIN, so reading a few frames of a
large multi-frame object fetches little more than those frames. Memory per
open reader is one block.
"""

from __future__ import annotations

import errno
import io
import logging
import re
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from dicomvault.storage.base import SizedReader, StorageError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from types_boto3_s3 import S3Client

LOGGER = logging.getLogger(__name__)

READ_BLOCK_MIN = 1024 * 1024
READ_BLOCK_MAX = 8 * 1024 * 1024
# Attempts to read a response body. The SDK retries a request until its
# headers arrive; a connection lost while the body streams is retried here.
BODY_READ_ATTEMPTS = 3
# io.BufferedReader in front of the block cache, for the many small reads of a DICOM parser.
BUFFER_SIZE = 64 * 1024
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class S3ObjectReader(SizedReader):
    """A read-only, seekable view of one S3 object, read by ranged GET requests.

    Use :func:`open_object` to create one. Every GET after the first sends
    the object's ETag in If-Match, so a reader never mixes the bytes of two
    versions of an object.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        object_name: str,
        key: str,
        size: int,
        etag: str,
        first_block: bytes,
    ) -> None:
        super().__init__()
        self.name = f"s3://{bucket}/{object_name}"
        self.key = key
        self.size = size
        self._client = client
        self._bucket = bucket
        self._object_name = object_name
        self._etag = etag
        self._position = 0
        self._block_start = 0
        self._block = first_block
        self._window = READ_BLOCK_MIN

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Copy bytes from the current position into ``buffer``; return the byte count.

        Returns fewer bytes than requested at the end of a block; 0 only at
        the end of the object.

        Raises
        ------
        FileNotFoundError
            If the object was deleted since it was opened.
        StorageError
            If the object changed since it was opened, or cannot be read.
        """
        with memoryview(buffer) as target_view, target_view.cast("B") as target:
            if not target or self._position >= self.size:
                return 0
            offset = self._position - self._block_start
            if not 0 <= offset < len(self._block):
                self._load_block(len(target))
                offset = 0
            count = min(len(target), len(self._block) - offset)
            target[:count] = self._block[offset : offset + count]
            self._position += count
            return count

    def readall(self) -> bytes:
        """Return the bytes from the current position to the end of the object."""
        parts = []
        while self._position < self.size:
            offset = self._position - self._block_start
            if not 0 <= offset < len(self._block):
                self._load_block(READ_BLOCK_MAX)
                offset = 0
            part = self._block[offset:]
            parts.append(part)
            self._position += len(part)
        return b"".join(parts)

    def close(self) -> None:
        """Drop the block in memory."""
        self._block = b""
        super().close()

    def _load_block(self, requested: int) -> None:
        """Fetch the block that starts at the current position, of at least ``requested`` bytes.

        ``requested`` is capped at READ_BLOCK_MAX, so that one read never
        keeps more than that in memory.
        """
        sequential = self._position == self._block_start + len(self._block)
        self._window = min(self._window * 2, READ_BLOCK_MAX) if sequential else READ_BLOCK_MIN
        length = min(max(requested, self._window), READ_BLOCK_MAX, self.size - self._position)
        self._block = b""  # released before the next block arrives
        self._block = fetch_range(
            self._client,
            self._bucket,
            self._object_name,
            self.key,
            self._position,
            length,
            self._etag,
        )
        self._block_start = self._position


def open_object(client: S3Client, bucket: str, object_name: str, key: str) -> io.BufferedReader:
    """Open an S3 object for reading; return a buffered, seekable reader.

    The first block is fetched at once, so a missing object fails here and
    the response gives the object's size and ETag.

    Raises
    ------
    FileNotFoundError
        If the bucket has no object of that name.
    StorageError
        If the object cannot be read.
    """
    where = f"s3://{bucket}/{object_name}"
    try:
        response = client.get_object(
            Bucket=bucket, Key=object_name, Range=f"bytes=0-{READ_BLOCK_MIN - 1}"
        )
        first_block = _read_body(response, where)
    except ClientError as exc:
        if error_code(exc) == "InvalidRange":
            # Only an empty object has no byte 0.
            return io.BufferedReader(
                S3ObjectReader(client, bucket, object_name, key, 0, "", b""), BUFFER_SIZE
            )
        raise _read_error(exc, key, where) from exc
    except BotoCoreError as exc:
        raise _read_error(exc, key, where) from exc

    size = _object_size(response, len(first_block), where)
    etag = str(response.get("ETag", ""))
    reader = S3ObjectReader(client, bucket, object_name, key, size, etag, first_block)
    return io.BufferedReader(reader, BUFFER_SIZE)


def fetch_range(
    client: S3Client,
    bucket: str,
    object_name: str,
    key: str,
    start: int,
    length: int,
    etag: str = "",
) -> bytes:
    """Return ``length`` bytes of an object from ``start``, fewer only at its end.

    ``etag``, when given, must still be the object's ETag.

    Raises
    ------
    FileNotFoundError
        If the bucket has no object of that name.
    StorageError
        If the object's ETag differs from ``etag``, or it cannot be read.
    """
    where = f"s3://{bucket}/{object_name}"
    arguments: dict[str, Any] = {
        "Bucket": bucket,
        "Key": object_name,
        "Range": f"bytes={start}-{start + length - 1}",
    }
    if etag:
        arguments["IfMatch"] = etag
    for attempt in range(1, BODY_READ_ATTEMPTS + 1):
        try:
            response = client.get_object(**arguments)
        except ClientError as exc:
            if error_code(exc) in ("PreconditionFailed", "412"):
                raise StorageError(
                    f"Stored object {key} at {where} changed while it was read; it was "
                    "written by another program. Read it again"
                ) from exc
            raise _read_error(exc, key, where) from exc
        except BotoCoreError as exc:
            raise _read_error(exc, key, where) from exc
        try:
            data = _read_body(response, where)
        except (BotoCoreError, OSError) as exc:
            if attempt == BODY_READ_ATTEMPTS:
                raise _read_error(exc, key, where) from exc
            LOGGER.warning(
                "Reading %s bytes %d-%d failed (%s); trying again (attempt %d of %d)",
                where,
                start,
                start + length - 1,
                exc,
                attempt + 1,
                BODY_READ_ATTEMPTS,
            )
            continue
        return data
    raise AssertionError("unreachable")  # the loop returns or raises


def object_exists(client: S3Client, bucket: str, object_name: str) -> bool:
    """Return whether ``bucket`` has an object named ``object_name``, by a HEAD request.

    Raises
    ------
    StorageError
        If S3 cannot tell, such as when access is denied.
    """
    where = f"s3://{bucket}/{object_name}"
    try:
        client.head_object(Bucket=bucket, Key=object_name)
    except ClientError as exc:
        if error_code(exc) in NOT_FOUND_CODES:
            return False
        raise StorageError(f"Cannot look up {where}: {exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"Cannot look up {where}: {exc}") from exc
    return True


def error_code(exc: ClientError) -> str:
    """Return the S3 error code of ``exc``, such as NoSuchKey, or the HTTP status as text."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    if code:
        return code
    return str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _read_body(response: Any, where: str) -> bytes:
    body = response["Body"]
    try:
        data: bytes = body.read()
    finally:
        body.close()
    expected = response.get("ContentLength")
    if expected is not None and len(data) != expected:
        raise OSError(f"{where} sent {len(data)} of {expected} bytes")
    return data


def _object_size(response: Any, received: int, where: str) -> int:
    content_range = str(response.get("ContentRange") or "")
    if not content_range:
        return received  # a server that ignores Range sends the whole object
    match = _CONTENT_RANGE_RE.match(content_range)
    if match is None:
        raise StorageError(f"Invalid Content-Range {content_range!r} from {where}")
    return int(match.group(3))


def _read_error(exc: Exception, key: str, where: str) -> OSError:
    if isinstance(exc, ClientError) and error_code(exc) in NOT_FOUND_CODES:
        return FileNotFoundError(errno.ENOENT, f"No stored object {key} at {where}", key)
    return StorageError(f"Cannot read stored object {key} from {where}: {exc}")
