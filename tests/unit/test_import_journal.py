"""Copies made by `dicomvault index --import` are journaled until they are indexed.

An indexing worker killed between its copy and the index commit leaves a
copy that no index row names. Each worker records its copies in a write
journal, and the start-up recovery removes those the index does not name.
The workers here are subprocesses that end on purpose at either point.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import Engine

from dicomvault.index.tasks import TaskStore
from dicomvault.recovery import journal_directory, remove_unindexed_writes
from dicomvault.storage.filesystem import FilesystemStorage
from tests.support.corpus import write_instance
from tests.support.datasets import make_instance

WORKER_TIMEOUT_SECONDS = 60

# Runs in a subprocess: copy one file as an import worker does, index it or
# not, then end without closing anything, as a killed worker would.
WORKER_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from dicomvault.ingest.jobs import ChunkOptions, FileJob, Mode, ReadOptions
    from dicomvault.ingest.reader import read_files
    from dicomvault.ingest.worker import index_files

    source, storage_root, journal_dir, index_url, task_id, then = sys.argv[1:]
    status = os.stat(source)
    jobs = [FileJob(source, status.st_size, status.st_mtime_ns)]
    read = ReadOptions(Mode.IMPORT, storage_root, journal_dir=journal_dir)
    if then == "index":
        summary = index_files(jobs, ChunkOptions(read, index_url, int(task_id), True))
        assert summary.indexed == 1, summary
    else:
        results = read_files(jobs, read)
        assert results[0].storage_key, results
    os._exit(0)
    """
)


@pytest.fixture(scope="module")
def index_backend() -> str:
    """SQLite: the journal and the recovery do not depend on the index back-end."""
    return "sqlite"


def import_in_worker(source: Path, data_dir: Path, engine: Engine, then: str) -> None:
    """Import ``source`` in a worker subprocess that indexes the copy (``then="index"``) or not."""
    task_id = TaskStore(engine).create("index", str(source.parent), "import", False)
    arguments = [
        str(source),
        str(data_dir / "storage"),
        str(journal_directory(data_dir)),
        engine.url.render_as_string(hide_password=False),
        str(task_id),
        then,
    ]
    completed = subprocess.run(
        [sys.executable, "-c", WORKER_SCRIPT, *arguments],
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr


def test_copy_not_indexed_removed(tmp_path: Path, migrated_engine: Engine) -> None:
    data_dir = tmp_path / "data"
    source = write_instance(tmp_path / "in" / "a.dcm", make_instance())
    import_in_worker(source, data_dir, migrated_engine, then="stop")
    storage = FilesystemStorage(data_dir / "storage")
    assert len(list(storage.iter_keys())) == 1

    report = remove_unindexed_writes(data_dir, storage, migrated_engine)

    assert (report.journals, report.checked, report.removed) == (1, 1, 1)
    assert list(storage.iter_keys()) == []
    assert list(journal_directory(data_dir).iterdir()) == []


def test_indexed_copy_kept(tmp_path: Path, migrated_engine: Engine) -> None:
    data_dir = tmp_path / "data"
    source = write_instance(tmp_path / "in" / "a.dcm", make_instance())
    import_in_worker(source, data_dir, migrated_engine, then="index")
    storage = FilesystemStorage(data_dir / "storage")

    report = remove_unindexed_writes(data_dir, storage, migrated_engine)

    assert (report.journals, report.checked, report.removed) == (1, 1, 0)
    assert len(list(storage.iter_keys())) == 1
