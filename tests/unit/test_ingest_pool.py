"""Unit tests for the pool of worker processes that read and index files."""

from __future__ import annotations

from pathlib import Path

from dicomvault.ingest.jobs import FileJob, Mode, ReadOptions
from dicomvault.ingest.pool import ReaderPool
from dicomvault.ingest.reader import Outcome, read_files
from tests.support.corpus import write_instance
from tests.support.datasets import make_instance


def jobs_for(folder: Path, count: int) -> list[FileJob]:
    jobs = []
    for number in range(count):
        path = write_instance(folder / f"{number}.dcm", make_instance())
        status = path.stat()
        jobs.append(FileJob(str(path), status.st_size, status.st_mtime_ns))
    return jobs


class TestReaderPool:
    def test_reads_in_workers(self, tmp_path: Path) -> None:
        pool = ReaderPool(1)
        try:
            results = pool.submit(
                read_files, jobs_for(tmp_path, 2), ReadOptions(Mode.IN_PLACE, "")
            ).result()
        finally:
            pool.close()

        assert [result.outcome for result in results] == [Outcome.INSTANCE, Outcome.INSTANCE]

    def test_close_while_starting(self) -> None:
        pool = ReaderPool(1)
        pool.start_in_background()
        pool.close()

        assert pool._executor is None
