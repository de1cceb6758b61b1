"""Walk a folder recursively and list the regular files in it.

Symbolic links are followed only when their target lies inside the folder,
and each folder is entered once, so a link cannot lead out of the folder or
into a loop.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

LOGGER = logging.getLogger(__name__)


class FoundFile(NamedTuple):
    """A regular file, with its size and modification time when it was seen."""

    path: str
    size: int
    mtime_ns: int


@dataclasses.dataclass(frozen=True)
class SkippedEntry:
    """An entry the scan did not follow, with the reason."""

    path: str
    reason: str


def scan_folder(
    folder: Path,
    on_skipped: Callable[[SkippedEntry], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> Iterator[FoundFile]:
    """Yield every regular file under ``folder``, which must be resolved.

    Symbolic links leading outside ``folder``, broken links, unreadable
    folders and special files (sockets, devices, FIFOs) are passed to
    ``on_skipped``. The walk ends early once ``stop`` returns True.
    """
    root = folder.resolve()
    visited: set[tuple[int, int]] = set()
    pending = [root]
    while pending:
        if stop is not None and stop():
            return
        directory = pending.pop()
        try:
            identity = os.stat(directory)
        except OSError as exc:
            _skip(on_skipped, str(directory), f"Cannot be read: {exc.strerror or exc}")
            continue
        key = (identity.st_dev, identity.st_ino)
        if key in visited:
            continue
        visited.add(key)
        try:
            with os.scandir(directory) as entries:
                children = sorted(entries, key=lambda entry: entry.name)
        except OSError as exc:
            _skip(on_skipped, str(directory), f"Cannot be read: {exc.strerror or exc}")
            continue

        subfolders = []
        for entry in children:
            found = _examine(entry, root, on_skipped)
            if isinstance(found, FoundFile):
                yield found
            elif found is not None:
                subfolders.append(found)
        # Reversed, so that folders are walked in name order.
        pending.extend(reversed(subfolders))


def _examine(
    entry: os.DirEntry[str], root: Path, on_skipped: Callable[[SkippedEntry], None] | None
) -> FoundFile | Path | None:
    """Return the file or subfolder an entry stands for, or None if it is skipped."""
    try:
        if entry.is_symlink():
            target = Path(entry.path).resolve()
            if not (target == root or target.is_relative_to(root)):
                _skip(
                    on_skipped,
                    entry.path,
                    f"Symbolic link to {target}, outside the folder; not followed",
                )
                return None
        status = entry.stat(follow_symlinks=True)
    except FileNotFoundError:
        _skip(on_skipped, entry.path, "Broken symbolic link or removed during the scan")
        return None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop
        _skip(on_skipped, entry.path, f"Cannot be read: {getattr(exc, 'strerror', None) or exc}")
        return None

    if stat.S_ISREG(status.st_mode):
        return FoundFile(entry.path, status.st_size, status.st_mtime_ns)
    if stat.S_ISDIR(status.st_mode):
        return Path(entry.path)
    _skip(on_skipped, entry.path, "Not a regular file")
    return None


def _skip(on_skipped: Callable[[SkippedEntry], None] | None, path: str, reason: str) -> None:
    LOGGER.debug("Skipping %s: %s", path, reason)
    if on_skipped is not None:
        on_skipped(SkippedEntry(path, reason))
