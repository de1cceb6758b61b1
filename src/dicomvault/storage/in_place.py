"""Storage keys of files indexed in place, outside the archive's storage folder.

An in-place file keeps its own path, so its key is that absolute path after
the prefix ``inplace:``, as in ``inplace:/srv/import/study1/img001.dcm``.
Stored keys never contain ':', so the two forms cannot be confused.
"""

from __future__ import annotations

from pathlib import Path

IN_PLACE_PREFIX = "inplace:"


def in_place_key(path: str | Path) -> str:
    """Return the storage key that references the file at the absolute ``path``.

    Raises
    ------
    ValueError
        If ``path`` is relative.
    """
    text = str(path)
    if not Path(text).is_absolute():
        raise ValueError(f"An in-place file needs an absolute path, got {text!r}")
    return IN_PLACE_PREFIX + text


def in_place_path(key: str) -> Path | None:
    """Return the file path an in-place key references, or None for other keys."""
    if not key.startswith(IN_PLACE_PREFIX):
        return None
    path = Path(key[len(IN_PLACE_PREFIX) :])
    if not path.is_absolute():
        raise ValueError(f"Invalid in-place storage key {key!r}: the path must be absolute")
    return path


def is_in_place_key(key: str) -> bool:
    """Return whether ``key`` references a file indexed in place."""
    return key.startswith(IN_PLACE_PREFIX)
