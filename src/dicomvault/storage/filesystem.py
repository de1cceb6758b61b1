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
from typing import BinaryIO

from dicomvault.storage.base import StorageError, StorageFullError, check_stored_key
from dicomvault.storage.in_place import in_place_path

LOGGER = logging.getLogger(__name__)

TEMP_DIR_NAME = ".tmp"
_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


class FilesystemStorage:
    """Stores each object as a file under ``root``.

    ``put`` writes to a temporary file in ``root/.tmp``, flushes it to disk
    with fsync, renames it into place and fsyncs the parent folder, so a
    crash leaves either the complete file or none (plus a temporary file that
    :meth:`remove_temporary_files` cleans up at start-up).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.temp_dir = self.root / TEMP_DIR_NAME
        self.temp_dir.mkdir(parents=True, exist_ok=True)

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
            If the key is neither an in-place key nor a relative name of
            safe characters.
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
            If ``key`` is an in-place key: the archive never writes those files.
        """
        if in_place_path(key) is not None:
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
            raise StorageError(f"Cannot write {key} in {self.root}: {exc.strerror or exc}") from exc
        except BaseException:
            _remove_quietly(temp_path)
            raise
        return size

    def open(self, key: str) -> BinaryIO:
        """Open the file of ``key`` for reading."""
        return self.path_for(key).open("rb")

    def plain_path(self, key: str) -> Path:
        """Return the path of the file of ``key``, which contains the object's bytes."""
        return self.path_for(key)

    def delete(self, key: str) -> None:
        """Remove the file of ``key``; a missing file is not an error.

        An in-place key is left alone: the archive never deletes files that it
        indexed where they are.
        """
        if in_place_path(key) is not None:
            LOGGER.debug("Not deleting in-place file %s", key)
            return
        _remove_quietly(self.path_for(key))

    def exists(self, key: str) -> bool:
        """Return whether the file of ``key`` exists."""
        return self.path_for(key).is_file()

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
