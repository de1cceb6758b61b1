"""The data directory lock: one server process per data directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicomvault.storage.lock import DataDirInUseError, lock_data_dir


def test_second_lock_rejected(tmp_path: Path) -> None:
    first = lock_data_dir(tmp_path)
    try:
        with pytest.raises(DataDirInUseError) as excinfo:
            lock_data_dir(tmp_path)
    finally:
        first.close()
    assert str(excinfo.value) == (
        f"Data directory {tmp_path} is in use by another dicomvault process (pid "
        f"{os.getpid()}); stop it or choose another directory with --data-dir"
    )


def test_lock_released_on_close(tmp_path: Path) -> None:
    lock_data_dir(tmp_path).close()

    again = lock_data_dir(tmp_path)
    again.close()

    assert (tmp_path / "dicomvault.lock").read_text(encoding="ascii") == f"{os.getpid()}\n"
