"""Unit tests for the pool of header reading processes."""

from __future__ import annotations

from pathlib import Path

from dicomvault.ingest.pool import ReaderPool
from dicomvault.ingest.reader import FileJob, Mode, Outcome, ReadOptions
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
            results = pool.submit(jobs_for(tmp_path, 2), ReadOptions(Mode.IN_PLACE, "")).result()
        finally:
            pool.close()

        assert [result.outcome for result in results] == [Outcome.INSTANCE, Outcome.INSTANCE]

    def test_reads_here_while_starting(self, tmp_path: Path) -> None:
        jobs = jobs_for(tmp_path, 3)
        pool = ReaderPool(1, read_while_starting=True)
        try:
            pool.start_in_background()
            # Whether this chunk is read here or in a worker depends on timing;
            # the results must be the same.
            first = pool.submit(jobs, ReadOptions(Mode.IN_PLACE, "")).result()
            pool.submit(jobs[:1], ReadOptions(Mode.IN_PLACE, "")).result()
            second = pool.submit(jobs, ReadOptions(Mode.IN_PLACE, "")).result()
        finally:
            pool.close()

        assert [result.outcome for result in first] == [Outcome.INSTANCE] * 3
        assert first == second

    def test_close_while_starting(self) -> None:
        pool = ReaderPool(1)
        pool.start_in_background()
        pool.close()

        assert pool._executor is None
