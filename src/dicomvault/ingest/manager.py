"""Run indexing tasks, bucket chunks and watched folders in the background of ``dicomvault serve``.

Several server processes may share one index database. Tasks queued
through any of them are kept in the database, and each is run by the
process that takes its lease "task:<id>" first. If that process stops,
another one resumes the task once the lease has expired. Chunks of bucket tasks
are indexed by every process (see :mod:`dicomvault.ingest.chunk_runner`).
A watched folder is scanned by one process at a time, the holder of the
lease "watch:<folder>"; the others stand by.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from dicomvault.cluster.keeper import LeaseKeeper
from dicomvault.cluster.maintenance import Maintenance
from dicomvault.index.tasks import ACTIVE_STATUSES, TaskRecord
from dicomvault.ingest.bucket import is_bucket_url
from dicomvault.ingest.bucket_task import BucketTaskLeader
from dicomvault.ingest.chunk_runner import ChunkRunner
from dicomvault.ingest.indexer import IngestContext
from dicomvault.ingest.jobs import Mode
from dicomvault.ingest.roots import PathNotAllowedError, resolve_bucket, resolve_folder
from dicomvault.ingest.runner import run_index_task
from dicomvault.ingest.watch import FolderWatcher

LOGGER = logging.getLogger(__name__)

QUEUE_POLL_SECONDS = 0.5
# A task whose folder this process cannot reach is looked at again after this long.
UNREACHABLE_RETRY_SECONDS = 60.0


class TaskFinishedError(ValueError):
    """The task cannot be cancelled because it has already finished."""


class TaskManager:
    """Runs queued indexing tasks one at a time, chunks of bucket tasks, and watched folders.

    Tasks led by this process run one after another, so that two tasks
    never compete for the worker processes and the disk; chunks of bucket
    tasks led elsewhere share the workers.
    """

    def __init__(self, context: IngestContext) -> None:
        self.context = context
        self.keeper = LeaseKeeper(context.engine, context.settings.server.lease_seconds)
        self.chunk_runner = ChunkRunner(context, self.keeper.owner)
        self.maintenance = Maintenance(context.engine, context.storage, context.settings.server)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._current: tuple[int, threading.Event] | None = None
        self._unreachable: dict[int, float] = {}
        self._threads: list[threading.Thread] = []
        self._watchers: list[FolderWatcher] = []

    def start(self) -> None:
        """Start the threads that run tasks and chunks, renew leases and run maintenance."""
        self.context.tasks.mark_interrupted()
        self.keeper.start()
        self.chunk_runner.start()
        self._spawn(self._run_tasks, "ingest-tasks")
        self._spawn(self._maintain, "maintenance")

    def submit(self, path: str, mode: Mode, prune: bool) -> TaskRecord:
        """Check ``path`` (a folder or an s3:// bucket prefix) and queue a task for it.

        Raises
        ------
        PathNotAllowedError
            If the path is not a folder under an import root, or not a
            bucket prefix under ``ingest.import_buckets``.
        """
        if is_bucket_url(path):
            target = resolve_bucket(path, self.context.settings.ingest.import_buckets).url
        else:
            target = str(resolve_folder(path, self.context.settings.import_roots))
        task_id = self.context.tasks.create("index", target, str(mode), prune, resumable=True)
        self._wake.set()
        record = self.context.tasks.get(task_id)
        assert record is not None
        return record

    def cancel(self, task_id: int) -> TaskRecord:
        """Request cancellation of a task; return it.

        Tasks of other processes (other servers, ``dicomvault index``) see
        the request at their next progress update.

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
        for watcher in self._watchers:
            if watcher.task_id == task_id:
                watcher.cancel.set()
        return record

    def queued_tasks(self) -> int:
        """Count the tasks waiting to run, in every process sharing the index."""
        try:
            return self.context.tasks.count_queued()
        except SQLAlchemyError:
            return 0

    def watch(self, folders: Sequence[Path]) -> None:
        """Watch each folder in place, in a thread of its own, while holding its lease."""
        for folder in folders:
            self._spawn(lambda folder=folder: self._watch(folder), f"watch-{folder}")

    def stop(self, timeout: float) -> None:
        """Stop the task, chunks and watchers of this process within ``timeout`` s.

        Resumable tasks are left running, for another process (or this one
        after a restart) to resume; their leases are released so that
        another process can take them over at once.
        """
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        with self._lock:
            if self._current is not None:
                self._current[1].set()
        for watcher in self._watchers:
            watcher.stop()
        self.chunk_runner.stop(max(0.0, deadline - time.monotonic()))
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                LOGGER.warning("Indexing thread %s did not stop in time", thread.name)
        self.keeper.stop()
        self.context.pool.close()

    # --- tasks ------------------------------------------------------------------------------

    def _run_tasks(self) -> None:
        while not self._stop.is_set():
            try:
                led = self._lead_next()
            except SQLAlchemyError as exc:
                LOGGER.error("Cannot look for indexing tasks to run: %s", exc)
                led = False
            except Exception:
                LOGGER.exception("Looking for indexing tasks failed unexpectedly")
                led = False
            if not led:
                self._wake.wait(QUEUE_POLL_SECONDS)
                self._wake.clear()

    def _lead_next(self) -> bool:
        """Run the oldest task no live process holds; return whether there was one."""
        now = time.monotonic()
        for task in self.context.tasks.claimable():
            if self._stop.is_set():
                return False
            if self._unreachable.get(task.id, 0.0) > now:
                continue
            name = f"task:{task.id}"
            lost = self.keeper.hold(name)
            if lost is None:
                continue
            try:
                record = self.context.tasks.get(task.id)
                if record is not None and record.status in ACTIVE_STATUSES:
                    self._lead(record, lost)
            finally:
                self.keeper.drop(name)
            return True
        return False

    def _lead(self, record: TaskRecord, lost: threading.Event) -> None:
        cancel = threading.Event()
        with self._lock:
            self._current = (record.id, cancel)
        try:
            if is_bucket_url(record.path):
                self.chunk_runner.wake()
                BucketTaskLeader(self.context, record, self._stop, lost).run()
            else:
                self._run_folder_task(record, cancel, lost)
        finally:
            with self._lock:
                self._current = None

    def _run_folder_task(
        self, record: TaskRecord, cancel: threading.Event, lost: threading.Event
    ) -> None:
        try:
            folder = resolve_folder(record.path, self.context.settings.import_roots)
        except PathNotAllowedError as exc:
            # Another server process queued it; its folder is not visible here.
            LOGGER.info("Task %d is left to another process: %s", record.id, exc)
            self._unreachable[record.id] = time.monotonic() + UNREACHABLE_RETRY_SECONDS
            return
        if record.status == "running":
            LOGGER.info("Resuming indexing task %d, whose process stopped: %s", record.id, folder)
        # The pass stops between chunks once the lease is lost or this process stops.
        link = threading.Thread(target=_set_when_any, args=(cancel, lost, self._stop), daemon=True)
        link.start()
        try:
            run_index_task(
                self.context,
                record.id,
                folder,
                Mode(record.mode),
                record.prune,
                cancel,
                resumable=True,
            )
        except Exception:
            LOGGER.exception("Indexing task %d could not be recorded", record.id)
        finally:
            cancel.set()

    # --- watched folders ----------------------------------------------------------------------

    def _watch(self, folder: Path) -> None:
        """Watch ``folder`` whenever this process holds its lease, until stopped or cancelled."""
        name = f"watch:{folder}"
        interval = self.context.settings.ingest.watch_interval
        while not self._stop.is_set():
            try:
                lost = self.keeper.hold(name)
            except SQLAlchemyError as exc:
                LOGGER.error("Cannot take the lease of watched folder %s: %s", folder, exc)
                lost = None
            if lost is None:
                self._stop.wait(max(interval, 1.0))
                continue
            try:
                status = self._watch_while_held(folder, lost)
            finally:
                self.keeper.drop(name)
            if status == "cancelled":
                return

    def _watch_while_held(self, folder: Path, lost: threading.Event) -> str:
        try:
            watcher = FolderWatcher(self.context, folder, lost=lost)
        except SQLAlchemyError as exc:
            LOGGER.error("Cannot start watching %s: %s", folder, exc)
            self._stop.wait(1.0)
            return "failed"
        self._watchers.append(watcher)
        try:
            return watcher.run()
        finally:
            self._watchers.remove(watcher)

    # --- helpers ------------------------------------------------------------------------------

    def _maintain(self) -> None:
        while not self._stop.wait(self.maintenance.interval):
            self.maintenance.run_if_due()

    def _spawn(self, target: object, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)


def _set_when_any(target: threading.Event, *sources: threading.Event) -> None:
    """Set ``target`` as soon as one of ``sources`` is set, or return once it is set."""
    while not target.wait(0.2):
        if any(source.is_set() for source in sources):
            target.set()
