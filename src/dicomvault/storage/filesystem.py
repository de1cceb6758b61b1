"""Filesystem storage: objects as files under a root folder, written atomically."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from dicomvault.config import StorageSettings
from dicomvault.storage.base import StorageError, StorageFullError, check_stored_key
from dicomvault.storage.in_bucket import (
    in_bucket_exists,
    is_in_bucket_key,
    is_indexed_in_place,
    open_in_bucket,
    read_in_bucket_prefix,
    source_client,
)
from dicomvault.storage.in_place import in_place_path

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

LOGGER = logging.getLogger(__name__)

TEMP_DIR_NAME = ".tmp"
_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


class FilesystemStorage:
    """Stores each object as a file under ``root``.

    ``put`` writes to a temporary file in ``root/.tmp``, flushes it to disk
    with fsync, renames it into place and fsyncs the parent folder, so a
    crash leaves either the complete file or none (plus a temporary file that
    :meth:`remove_temporary_files` cleans up at start-up).

    Objects indexed in place in a bucket (``inbucket:`` keys, see
    :mod:`dicomvault.storage.in_bucket`) are read through an S3 client of
    the endpoint, region and retry settings of ``source``, built at the
    first such read. Without ``source`` they cannot be read.
    """

    def __init__(self, root: str | Path, source: StorageSettings | None = None) -> None:
        self.root = Path(root)
        self.temp_dir = self.root / TEMP_DIR_NAME
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.source = source

    @property
    def location(self) -> str:
        """The storage folder, for messages."""
        return str(self.root)

    def describe(self) -> str:
        """Return a one-line description for logs."""
        return f"filesystem at {self.root}"

    def free_bytes(self) -> int | None:
        """Return the free space of the file system of the storage folder; None if unknown."""
        try:
            return shutil.disk_usage(self.root).free
        except OSError:
            return None

    def path_for(self, key: str) -> Path:
        """Return the file path of a key.

        An in-place key (``inplace:/abs/path``) names a file outside the
        storage folder that was indexed where it is; its path is returned.

        Raises
        ------
        ValueError
            If the key is an in-bucket key, which names no file, or neither
            an in-place key nor a relative name of safe characters.
        """
        referenced = in_place_path(key)
        if referenced is not None:
            return referenced
        check_stored_key(key)
        return self.root / key

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        """Write the chunks to ``key`` atomically and durably; return the size in bytes.

        Raises
        ------
        ValueError
            If ``key`` is an in-place or in-bucket key: the archive never
            writes those files.
        """
        if is_indexed_in_place(key):
            raise ValueError(f"Cannot write {key}: in-place files are never modified")
        path = self.path_for(key)
        temp_path = self.temp_dir / f"{uuid.uuid4().hex}.part"
        size = 0
        try:
            with temp_path.open("wb") as file:
                for chunk in chunks:
                    file.write(chunk)
                    size += len(chunk)
                file.flush()
                os.fsync(file.fileno())
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp_path, path)
            try:
                _fsync_directory(path.parent)
            except OSError:
                # The rename may not survive a crash; keep no object under the key.
                _remove_quietly(path)
                raise
        except OSError as exc:
            _remove_quietly(temp_path)
            if exc.errno in _NO_SPACE_ERRNOS:
                raise StorageFullError(f"No space left to store {key} in {self.root}") from exc
            if exc.errno == errno.EROFS:
                # Like a full disk, this takes an operator to fix, and the same
                # request may then succeed.
                raise StorageFullError(
                    f"Cannot store {key} in {self.root}: the file system is read-only"
                ) from exc
            raise StorageError(f"Cannot write {key} in {self.root}: {exc.strerror or exc}") from exc
        except BaseException:
            _remove_quietly(temp_path)
            raise
        return size

    def open(self, key: str) -> BinaryIO:
        """Open the file or in-bucket object of ``key`` for reading.

        Raises
        ------
        FileNotFoundError
            If the file or object does not exist.
        StorageError
            If an in-bucket object cannot be read, or this storage has no
            ``source`` settings to reach its bucket.
        """
        if is_in_bucket_key(key):
            return open_in_bucket(self._source_client(key), key)
        return self.path_for(key).open("rb")

    def read_prefix(self, key: str, size: int) -> bytes:
        """Return the first ``size`` bytes of the file or in-bucket object of ``key``.

        Raises
        ------
        FileNotFoundError, StorageError
            As :meth:`open`.
        """
        if is_in_bucket_key(key):
            return read_in_bucket_prefix(self._source_client(key), key, size)
        with self.path_for(key).open("rb") as file:
            return file.read(size)

    def plain_path(self, key: str) -> Path | None:
        """Return the path of the file of ``key``; None for an in-bucket object, which is remote."""
        if is_in_bucket_key(key):
            return None
        return self.path_for(key)

    def delete(self, key: str) -> None:
        """Remove the file of ``key``; a missing file is not an error.

        An in-place or in-bucket key is left alone: the archive never
        deletes files or objects that it indexed where they are.
        """
        if is_indexed_in_place(key):
            LOGGER.debug("Not deleting %s: it was indexed in place", key)
            return
        _remove_quietly(self.path_for(key))

    def exists(self, key: str) -> bool:
        """Return whether the file of ``key`` exists; for an in-bucket key, by a HEAD request.

        Raises
        ------
        StorageError
            If S3 cannot tell whether an in-bucket object exists.
        """
        if is_in_bucket_key(key):
            return in_bucket_exists(self._source_client(key), key)
        return self.path_for(key).is_file()

    def _source_client(self, key: str) -> S3Client:
        if self.source is None:
            raise StorageError(
                f"Cannot read {key}: the storage {self.root} was opened without the S3 "
                "settings that reach source buckets"
            )
        return source_client(self.source)

    def iter_keys(self) -> Iterator[str]:
        """Yield the key of every stored object, in no particular order.

        Reserved names, which start with '.', are skipped: the temporary
        folder and the key record of encrypted storage.
        """
        for folder, subfolders, files in os.walk(self.root):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            relative = Path(folder).relative_to(self.root)
            for name in sorted(files):
                if not name.startswith("."):
                    yield (relative / name).as_posix()

    def remove_temporary_files(self, older_than: float = 0.0) -> int:
        """Delete temporary files left by an interrupted write; return how many.

        Only call this when no write is in progress (at start-up), or with
        ``older_than`` seconds larger than any write takes.
        """
        removed = 0
        now = time.time()
        for path in self.temp_dir.glob("*.part"):
            try:
                if now - path.stat().st_mtime >= older_than:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            LOGGER.warning("Removed %d temporary files left in %s", removed, self.temp_dir)
        return removed


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        LOGGER.warning("Cannot remove %s: %s", path, exc)
