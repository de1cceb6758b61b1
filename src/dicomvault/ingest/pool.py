"""A pool of worker processes that read file headers and index them, sized to the machine."""

from __future__ import annotations

import concurrent.futures
import gc
import logging
import multiprocessing
import os
import select
import signal
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

LOGGER = logging.getLogger(__name__)

# How often a worker looks whether its server still runs, where no pidfd exists.
PARENT_POLL_SECONDS = 1.0
# Modules the forkserver imports once, so that each worker starts with them.
PRELOADED_MODULES = ["dicomvault.ingest.worker"]

_Result = TypeVar("_Result")


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


def _initialize_worker(parent_pid: int) -> None:
    # The parent handles Ctrl-C and stops the pool itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with(parent_pid)
    # Files are read tolerantly; pydicom's warnings about non-conformant
    # values would only clutter the terminal, since workers have no log handler.
    warnings.simplefilter("ignore")
    # The preloaded modules' objects live as long as the worker; frozen, they
    # are not traversed by every full garbage collection.
    gc.freeze()


def _exit_with(pid: int) -> None:
    """End this worker when process ``pid`` ends, even when it was killed with SIGKILL.

    A worker has both ends of the pool's task pipe open, so the death of the
    process that started the pool never reaches it as an end of file. And
    while a worker runs, the forkserver that forked it runs too. A daemon
    thread waits on a pidfd, or polls every second where there is none.
    """

    def wait_and_exit() -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # no pidfd here, or ended already
            while _alive(pid):
                time.sleep(PARENT_POLL_SECONDS)
        else:
            select.select([pidfd], [], [])
        os._exit(0)

    threading.Thread(target=wait_and_exit, name="parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ReaderPool:
    """Worker processes that read and index chunks of files.

    They run module-level functions such as
    :func:`~dicomvault.ingest.jobs.index_chunk`, with picklable arguments.

    The processes start on the first :meth:`submit` or
    :meth:`start_in_background` and live until :meth:`close`, so a watched
    folder reuses them between scans. They are started with forkserver, not
    fork, because the archive's server process runs threads, and a forked
    child could inherit a lock held by one of them.

    The pool is a ProcessPoolExecutor rather than a multiprocessing.Pool:
    the latter's worker handler thread spins while a result waits to be
    read (CPython 3.11), which cost the indexing process about 40 us of CPU
    per file and competed with it for the GIL.
    """

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers or default_workers()
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._starting = False
        self._lock = threading.Lock()

    def start_in_background(self) -> None:
        """Start the worker processes in a thread, unless they run; the caller goes on.

        Starting took 0.3 to 0.9 s on a shared 2-core machine, because a new
        interpreter imports the workers' modules. The caller can scan meanwhile.
        """
        with self._lock:
            if self._executor is not None or self._starting:
                return
            self._starting = True
        thread = threading.Thread(
            target=self._start, args=(True,), name="reader-pool-start", daemon=True
        )
        thread.start()

    def submit(self, function: Callable[..., _Result], *args: Any) -> Future[_Result]:
        """Queue ``function(*args)`` for a worker process; return its future."""
        executor = self._start()
        assert executor is not None
        try:
            return executor.submit(function, *args)
        except BrokenProcessPool:
            # A worker died (killed, or out of memory); the executor accepts no
            # more work, so the next task gets new processes.
            LOGGER.warning("A header reading process ended unexpectedly; starting new ones")
            self.close()
            executor = self._start()
            assert executor is not None
            return executor.submit(function, *args)

    def _start(self, background: bool = False) -> concurrent.futures.ProcessPoolExecutor | None:
        with self._lock:
            if background and not self._starting:
                return None  # closed before this thread ran
            if self._executor is not None:
                self._starting = False
                return self._executor
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(PRELOADED_MODULES)
            executor = concurrent.futures.ProcessPoolExecutor(
                self.workers,
                mp_context=context,
                initializer=_initialize_worker,
                initargs=(os.getpid(),),
            )
            # The executor starts processes as tasks arrive; these start all
            # of them now and wait until they run.
            for future in [executor.submit(os.getpid) for _ in range(self.workers)]:
                future.result()
            self._executor = executor
            self._starting = False
            LOGGER.info("Started %d header reading processes", self.workers)
            return executor

    def close(self) -> None:
        """Stop the worker processes at once; chunks still queued are dropped."""
        with self._lock:
            executor, self._executor = self._executor, None
            self._starting = False
        if executor is None:
            return
        # NOTE: ProcessPoolExecutor has no public way to stop running tasks
        # before Python 3.14 (terminate_workers), so the processes are
        # terminated through its private process table.
        # NOTE: once, in a CI run under load, `dicomvault index` ended with
        # multiprocessing's resource tracker warning of leaked objects. It
        # did not happen in 25 runs on a quiet machine, and the cause is not known.
        processes = list(getattr(executor, "_processes", {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join()
        executor.shutdown(wait=True)
        LOGGER.debug("Stopped the header reading processes")
