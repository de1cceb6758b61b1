"""Unit tests for the pool of worker processes that read and index files."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
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

    def test_workers_end_when_the_starting_process_is_killed(self) -> None:
        # A process starts a pool, prints its workers' process ids and waits.
        script = (
            "import os, time\n"
            "from dicomvault.ingest.pool import ReaderPool\n"
            "pool = ReaderPool(2)\n"
            "pool.submit(os.getpid).result()\n"
            "print(*pool._executor._processes, flush=True)\n"
            "time.sleep(120)\n"
        )
        with subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
        ) as owner:
            try:
                assert owner.stdout is not None
                workers = [int(pid) for pid in owner.stdout.readline().split()]
            finally:
                owner.send_signal(signal.SIGKILL)
                owner.wait(KILL_WAIT_SECONDS)

        assert len(workers) == 2
        deadline = time.monotonic() + KILL_WAIT_SECONDS
        while any(running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(running(pid) for pid in workers)


KILL_WAIT_SECONDS = 10.0


def running(pid: int) -> bool:
    """Return whether process ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
