"""Run indexing tasks and watched folders in the background of ``dicomvault serve``."""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from dicomvault.index.tasks import TaskRecord
from dicomvault.ingest.indexer import IngestContext
from dicomvault.ingest.jobs import Mode
from dicomvault.ingest.roots import resolve_folder
from dicomvault.ingest.runner import run_index_task
from dicomvault.ingest.watch import FolderWatcher

LOGGER = logging.getLogger(__name__)

QUEUE_POLL_SECONDS = 0.2


class TaskFinishedError(ValueError):
    """The task cannot be cancelled because it has already finished."""


@dataclasses.dataclass(frozen=True)
class _QueuedTask:
    task_id: int
    folder: Path
    mode: Mode
    prune: bool


class TaskManager:
    """Runs queued indexing tasks one at a time, and one thread per watched folder.

    Tasks run one after another so that two tasks never compete for the
    worker processes and the disk.
    """

    def __init__(self, context: IngestContext) -> None:
        self.context = context
        self._queue: queue.Queue[_QueuedTask] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._current: tuple[int, threading.Event] | None = None
        self._runner: threading.Thread | None = None
        self._watchers: list[tuple[FolderWatcher, threading.Thread]] = []

    def start(self) -> None:
        """Start the thread that runs queued tasks."""
        self.context.tasks.mark_interrupted()
        self._runner = threading.Thread(target=self._run_queue, name="ingest-tasks", daemon=True)
        self._runner.start()

    def submit(self, path: str, mode: Mode, prune: bool) -> TaskRecord:
        """Check ``path`` against the import roots and queue a task for it; return the task.

        Raises
        ------
        PathNotAllowedError
            If the path is not a folder under an import root.
        """
        folder = resolve_folder(path, self.context.settings.import_roots)
        task_id = self.context.tasks.create("index", str(folder), str(mode), prune)
        self._queue.put(_QueuedTask(task_id, folder, mode, prune))
        record = self.context.tasks.get(task_id)
        assert record is not None
        return record

    def cancel(self, task_id: int) -> TaskRecord:
        """Request cancellation of a task; return it.

        Tasks of other processes (such as ``dicomvault index``) see the
        request at their next progress update.

        Raises
        ------
        TaskNotFoundError
            If no task has this id.
        TaskFinishedError
            If the task has already finished.
        """
        record = self.context.tasks.request_cancel(task_id)
        if record.finished_at is not None and record.status != "cancelled":
            raise TaskFinishedError(f"Task {task_id} has already finished: {record.status}")
        with self._lock:
            if self._current is not None and self._current[0] == task_id:
                self._current[1].set()
        for watcher, _ in self._watchers:
            if watcher.task_id == task_id:
                watcher.cancel.set()
        return record

    def queued_tasks(self) -> int:
        """Count the tasks waiting to run; a task cancelled while it waits counts until skipped."""
        return self._queue.qsize()

    def watch(self, folders: Sequence[Path]) -> None:
        """Start watching each folder, in place, in a thread of its own."""
        for folder in folders:
            watcher = FolderWatcher(self.context, folder)
            thread = threading.Thread(target=watcher.run, name=f"watch-{folder}", daemon=True)
            thread.start()
            self._watchers.append((watcher, thread))

    def stop(self, timeout: float) -> None:
        """Cancel the running task, stop the watchers and the worker pool, within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        with self._lock:
            if self._current is not None:
                self._current[1].set()
        for watcher, _ in self._watchers:
            watcher.stop()
        threads = [thread for _, thread in self._watchers]
        if self._runner is not None:
            threads.append(self._runner)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                LOGGER.warning("Indexing thread %s did not stop in time", thread.name)
        self.context.pool.close()

    def _run_queue(self) -> None:
        while not self._stop.is_set():
            try:
                queued = self._queue.get(timeout=QUEUE_POLL_SECONDS)
            except queue.Empty:
                continue
            record = self.context.tasks.get(queued.task_id)
            if record is None or record.status != "queued":
                continue  # cancelled while it waited
            cancel = threading.Event()
            with self._lock:
                self._current = (queued.task_id, cancel)
            try:
                run_index_task(
                    self.context, queued.task_id, queued.folder, queued.mode, queued.prune, cancel
                )
            except Exception:
                LOGGER.exception("Indexing task %d could not be recorded", queued.task_id)
            finally:
                with self._lock:
                    self._current = None
