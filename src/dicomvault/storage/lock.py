"""An exclusive lock on the data directory, so two servers never share one."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import TextIO

LOCK_FILE_NAME = "dicomvault.lock"


class DataDirInUseError(RuntimeError):
    """Another process has locked the data directory."""


def lock_data_dir(data_dir: Path) -> TextIO:
    """Take the lock of ``data_dir`` for the life of the process; return the open lock file.

    The lock is released when the file is closed or the process ends, also
    after a crash, so a stale lock file never blocks a restart.

    Raises
    ------
    DataDirInUseError
        If another process has the lock; the message gives its process id.
    """
    path = data_dir / LOCK_FILE_NAME
    file = path.open("a+", encoding="ascii")
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip() or "unknown"
        file.close()
        raise DataDirInUseError(
            f"Data directory {data_dir} is in use by another dicomvault process (pid "
            f"{holder}); stop it or choose another directory with --data-dir"
        ) from None
    file.seek(0)
    file.truncate()
    file.write(f"{os.getpid()}\n")
    file.flush()
    return file
