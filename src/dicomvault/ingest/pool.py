"""A pool of worker processes that read file headers, sized to the machine."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.pool
import os
import signal
import threading
import warnings

from dicomvault.ingest.reader import FileJob, ReadOptions, ReadResult, read_files

LOGGER = logging.getLogger(__name__)


def default_workers() -> int:
    """Return the number of CPU cores this process may use."""
    counter = getattr(os, "process_cpu_count", None)  # Python 3.13 and newer
    if counter is not None:
        count = counter()
    elif hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:
        count = os.cpu_count()
    return max(1, count or 1)


def _initialize_worker() -> None:
    # The parent handles Ctrl-C and stops the pool itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Files are read tolerantly; pydicom's warnings about non-conformant
    # values would only clutter the terminal, since workers have no log handler.
    warnings.simplefilter("ignore")


class ReaderPool:
    """Worker processes that run :func:`~dicomvault.ingest.reader.read_files`.

    The processes start on the first :meth:`submit` or
    :meth:`start_in_background` and live until
    :meth:`close`, so a watched folder reuses them between scans. They are
    started with forkserver, not fork, because the archive's server process
    runs threads, and a forked child could inherit a lock held by one of them.
    """

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers or default_workers()
        self._pool: multiprocessing.pool.Pool | None = None
        self._starting = False
        self._lock = threading.Lock()

    def start_in_background(self) -> None:
        """Start the worker processes in a thread, unless they run; the caller goes on.

        Starting takes about half a second (a new interpreter imports the
        reader's modules), which the caller can spend scanning a folder.
        """
        with self._lock:
            if self._pool is not None or self._starting:
                return
            self._starting = True
        thread = threading.Thread(
            target=self._start, args=(True,), name="reader-pool-start", daemon=True
        )
        thread.start()

    def submit(
        self, jobs: list[FileJob], options: ReadOptions
    ) -> multiprocessing.pool.AsyncResult[list[ReadResult]]:
        """Queue a chunk of files for reading; the result is one ReadResult per job."""
        pool = self._start()
        assert pool is not None
        return pool.apply_async(read_files, (jobs, options))

    def _start(self, background: bool = False) -> multiprocessing.pool.Pool | None:
        with self._lock:
            if background and not self._starting:
                return None  # closed before this thread ran
            self._starting = False
            if self._pool is None:
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(["dicomvault.ingest.reader"])
                self._pool = context.Pool(self.workers, initializer=_initialize_worker)
                LOGGER.info("Started %d header reading processes", self.workers)
            return self._pool

    def close(self) -> None:
        """Stop the worker processes at once; chunks still queued are dropped."""
        with self._lock:
            pool, self._pool = self._pool, None
            self._starting = False
        if pool is not None:
            pool.terminate()
            pool.join()
            LOGGER.debug("Stopped the header reading processes")
