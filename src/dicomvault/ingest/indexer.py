"""One pass of an indexing task over a folder: scan, read in workers, write in batches.

The pass keeps the index consistent at every moment: each batch of files is
indexed in one transaction, together with the remembered state of those
files and the task's report entries. A cancelled pass stops between batches.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from sqlalchemy import Connection, Engine, delete, select
from sqlalchemy.exc import SQLAlchemyError

from dicomvault.config import Settings
from dicomvault.index.files import FileState, IndexedFiles
from dicomvault.index.schema import instances
from dicomvault.index.tasks import TaskCounts, TaskFile, TaskStore
from dicomvault.index.writer import IndexOutcome, IndexWriter, StoredInstance, prune_empty_parents
from dicomvault.ingest.pool import ReaderPool
from dicomvault.ingest.reader import FileJob, Mode, Outcome, ReadOptions, ReadResult
from dicomvault.ingest.scan import SkippedEntry, scan_folder
from dicomvault.storage.encrypted import EncryptedStorage
from dicomvault.storage.filesystem import FilesystemStorage
from dicomvault.storage.in_place import in_place_key

LOGGER = logging.getLogger(__name__)

CHUNK_FILES = 64  # files per message to and from a worker
# Chunks queued per worker: enough that the workers keep reading while this
# process waits for a commit (about 20 ms with synchronous=FULL), a few MB.
CHUNKS_IN_FLIGHT_PER_WORKER = 8
PROGRESS_INTERVAL_SECONDS = 0.5
MAX_BATCH_SECONDS = 1.0  # results wait at most this long before they are written
STOP_TIMEOUT_SECONDS = 10.0  # a cancelled pass waits this long for chunks in flight
DUPLICATE_REASON = (
    "An instance with SOP Instance UID {uid} is already indexed and "
    "storage.duplicate_policy is reject"
)


_Chunk = concurrent.futures.Future[list[ReadResult]]


class IndexingError(RuntimeError):
    """The pass cannot go on: the index database or the storage failed."""


@dataclasses.dataclass
class IngestContext:
    """The settings, index, storage and worker pool that indexing passes share.

    ``writer`` defaults to a new one; ``serve`` passes the archive's own, so
    that C-STORE and indexing take turns at its SQLite write lock.
    """

    settings: Settings
    engine: Engine
    storage: FilesystemStorage | EncryptedStorage
    pool: ReaderPool
    writer: IndexWriter | None = None

    def __post_init__(self) -> None:
        if self.writer is None:
            self.writer = IndexWriter(self.engine)
        self.files = IndexedFiles(self.engine)
        self.tasks = TaskStore(self.engine)


class FolderIndexer:
    """Indexes the new and changed files of one folder, pass by pass.

    Parameters
    ----------
    context : IngestContext
        Settings, index, storage and worker pool.
    folder : Path
        The resolved folder, already checked against the import roots.
    mode : Mode
        In place or import.
    task_id : int
        The task whose counts and report this indexer updates.
    counts : TaskCounts
        Counts to add to; a watched folder keeps one across passes.
    cancel : threading.Event
        Set to stop between batches.
    on_progress : callable, optional
        Called with the counts about twice a second.
    watching : bool
        A watched folder leaves files that are still being written for the
        next pass, and counts only new and changed files. A one-time task
        waits for them, up to ``SETTLE_ROUNDS`` looks.
    """

    SETTLE_ROUNDS = 10

    def __init__(
        self,
        context: IngestContext,
        folder: Path,
        mode: Mode,
        task_id: int,
        counts: TaskCounts,
        cancel: threading.Event,
        on_progress: Callable[[TaskCounts], None] | None = None,
        watching: bool = False,
    ) -> None:
        self.context = context
        self.folder = folder
        self.mode = mode
        self.task_id = task_id
        self.counts = counts
        self.cancel = cancel
        self.on_progress = on_progress
        self.watching = watching
        encryption = context.settings.encryption
        self.options = ReadOptions(
            mode, str(context.storage.root), encryption if encryption.enabled else None
        )
        self.replace = context.settings.storage.duplicate_policy == "replace"
        self.settle_ns = int(context.settings.ingest.settle_seconds * 1e9)
        self._last_progress = 0.0
        self._saved_counts: tuple[int, ...] = ()
        self._skipped_entries: list[TaskFile] = []

    # --- the pass -------------------------------------------------------------------------

    def run_pass(self, prune: bool = False) -> bool:
        """Index what is new or changed in the folder; return False if cancelled.

        Raises
        ------
        IndexingError
            If the index database or the storage fails.
        """
        try:
            known = self.context.files.under(str(self.folder))
        except SQLAlchemyError as exc:
            raise IndexingError(f"The index database failed: {exc}") from exc

        seen: set[str] = set()
        jobs: list[FileJob] = []
        settling: list[FileJob] = []
        now_ns = time.time_ns()
        for found in scan_folder(self.folder, self._on_skipped, self.cancel.is_set):
            seen.add(found.path)
            state = known.get(found.path)
            unchanged = (
                state is not None
                and state.size == found.size
                and state.mtime_ns == found.mtime_ns
                and state.mode == self.mode
            )
            if unchanged and self.watching:
                continue
            self.counts.found += 1
            if unchanged:
                self.counts.skipped += 1
            elif now_ns - found.mtime_ns < self.settle_ns:
                settling.append(FileJob(found.path, found.size, found.mtime_ns))
            else:
                if not jobs:
                    # The workers start while the rest of the folder is scanned.
                    self.context.pool.start_in_background()
                jobs.append(FileJob(found.path, found.size, found.mtime_ns))
            self._progress()
        if self.cancel.is_set():
            return False
        self._report_skipped_entries()

        settling += self._read_and_index(jobs)
        if self.watching:
            self.counts.pending = len(settling)
        else:
            settling = self._wait_for_settled(settling)
            self._report_pending(settling)
        if self.cancel.is_set():
            return False

        if prune:
            self._prune([path for path in known if path not in seen])
        self._progress(force=True)
        return True

    # --- reading and writing ----------------------------------------------------------------

    def _read_and_index(self, jobs: list[FileJob]) -> list[FileJob]:
        """Read the files in the worker pool and index them; return those that changed.

        Batches are written by a second thread, so that this one gathers
        the next batch while the previous commit waits for the disk (about
        20 ms per commit with SQLite's synchronous=FULL). At most one batch
        is written at a time, in order.
        """
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="index-writer") as writer:
            batches = _BatchQueue(writer, self._write_batch)
            in_flight: collections.deque[_Chunk] = collections.deque()
            buffer: list[ReadResult] = []
            try:
                return self._read_into_batches(jobs, batches, in_flight, buffer)
            except IndexingError:
                self._discard(in_flight, buffer)
                raise
            finally:
                batches.wait_quietly()

    def _read_into_batches(
        self,
        jobs: list[FileJob],
        batches: _BatchQueue,
        in_flight: collections.deque[_Chunk],
        buffer: list[ReadResult],
    ) -> list[FileJob]:
        changed: list[FileJob] = []
        last_write = time.monotonic()
        chunks = [jobs[i : i + CHUNK_FILES] for i in range(0, len(jobs), CHUNK_FILES)]
        max_in_flight = CHUNKS_IN_FLIGHT_PER_WORKER * self.context.pool.workers
        batch_size = self.context.settings.ingest.batch_size

        position = 0
        while position < len(chunks) or in_flight:
            if self.cancel.is_set():
                batches.wait()
                self._discard(in_flight, buffer)
                buffer.clear()
                return changed
            while position < len(chunks) and len(in_flight) < max_in_flight:
                in_flight.append(self.context.pool.submit(chunks[position], self.options))
                position += 1
            pending = in_flight[0]
            concurrent.futures.wait([pending], PROGRESS_INTERVAL_SECONDS)
            if pending.done():
                in_flight.popleft()
                for result in pending.result():
                    if result.outcome is Outcome.CHANGED:
                        changed.append(result.job)
                    else:
                        buffer.append(result)
            if len(buffer) >= batch_size or (
                buffer and time.monotonic() - last_write >= MAX_BATCH_SECONDS
            ):
                batches.put(list(buffer))
                buffer.clear()
                last_write = time.monotonic()
                self._progress(force=True, save_when_due=True)
            else:
                self._progress()
        if buffer:
            batches.put(list(buffer))
            buffer.clear()
        batches.wait()
        return changed

    def _write_batch(self, results: list[ReadResult]) -> None:
        """Index a batch of read files in one transaction, with their states and report."""
        read = [r for r in results if r.outcome is Outcome.INSTANCE and r.header is not None]
        stored = [
            StoredInstance(r.header, r.storage_key, r.size, "")  # type: ignore[arg-type]
            for r in read
        ]
        report: list[TaskFile] = []
        states: list[FileState] = []
        for result in results:
            if result.outcome in (Outcome.FAILED, Outcome.IGNORED):
                LOGGER.debug("Not indexing %s: %s", result.job.path, result.reason)
                report.append(TaskFile(result.job.path, str(result.outcome), result.reason))
                # Without a remembered state, the next task reads the file again.
                if not result.retry:
                    states.append(self._state(result, str(result.outcome), reason=result.reason))
        duplicates: list[ReadResult] = []

        def record(connection: Connection, outcomes: list[IndexOutcome | None]) -> None:
            for result, outcome in zip(read, outcomes, strict=True):
                uid = result.header.sop_instance_uid  # type: ignore[union-attr]
                if outcome is None:
                    duplicates.append(result)
                    reason = DUPLICATE_REASON.format(uid=uid)
                    report.append(TaskFile(result.job.path, "failed", reason))
                    states.append(self._state(result, "failed", reason=reason))
                else:
                    states.append(self._state(result, "indexed", uid, result.storage_key))
            self.context.files.record(connection, states)
            self.context.tasks.add_files(connection, self.task_id, report)

        try:
            assert self.context.writer is not None
            outcomes = self.context.writer.add_instances(stored, self.replace, also=record)
        except SQLAlchemyError as exc:
            self._delete_copies(read)
            raise IndexingError(f"The index database failed: {exc}") from exc

        # After the commit: files the new instances replaced, and copies not indexed.
        for outcome in outcomes:
            if outcome is not None and outcome.replaced_storage_key:
                self.context.storage.delete(outcome.replaced_storage_key)
        self._delete_copies(duplicates)

        self.counts.indexed += len(read) - len(duplicates)
        self.counts.failed += sum(1 for f in report if f.outcome == "failed")
        self.counts.ignored += sum(1 for f in report if f.outcome == "ignored")
        LOGGER.debug("Indexed a batch of %d files from %s", len(results), self.folder)

    def _state(
        self, result: ReadResult, outcome: str, uid: str = "", key: str = "", reason: str = ""
    ) -> FileState:
        job = result.job
        return FileState(
            job.path, job.size, job.mtime_ns, str(self.mode), outcome, uid, key, reason
        )

    def _discard(self, in_flight: collections.deque[_Chunk], buffer: list[ReadResult]) -> None:
        """Drop what was read but not indexed; in import mode, delete the copies made."""
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        unwritten = list(buffer)
        for pending in in_flight:
            concurrent.futures.wait([pending], max(0.0, deadline - time.monotonic()))
            if pending.done() and not pending.cancelled() and pending.exception() is None:
                unwritten += pending.result()
        self._delete_copies(r for r in unwritten if r.outcome is Outcome.INSTANCE)

    def _delete_copies(self, results: Iterable[ReadResult]) -> None:
        if self.mode is Mode.IMPORT:
            for result in results:
                self.context.storage.delete(result.storage_key)

    # --- files still being written ----------------------------------------------------------

    def _wait_for_settled(self, settling: list[FileJob]) -> list[FileJob]:
        """Read files once unchanged for settle_seconds; return those still changing."""
        for _ in range(self.SETTLE_ROUNDS):
            if not settling or self.cancel.is_set():
                break
            newest = max(job.mtime_ns for job in settling)
            wait = (newest + self.settle_ns - time.time_ns()) / 1e9
            if self.cancel.wait(min(max(wait, 0.05), self.context.settings.ingest.settle_seconds)):
                break
            ready: list[FileJob] = []
            still: list[FileJob] = []
            for job in settling:
                try:
                    status = os.stat(job.path)
                except FileNotFoundError:
                    self.counts.found -= 1
                    continue
                same = status.st_size == job.size and status.st_mtime_ns == job.mtime_ns
                settled = time.time_ns() - status.st_mtime_ns >= self.settle_ns
                fresh = FileJob(job.path, status.st_size, status.st_mtime_ns)
                (ready if same and settled else still).append(fresh)
            settling = still + self._read_and_index(ready)
        return settling

    def _report_pending(self, settling: list[FileJob]) -> None:
        self.counts.pending = len(settling)
        if not settling:
            return
        reason = (
            "Still being written: its size or modification time kept changing; "
            "index the folder again once it is complete"
        )
        files = [TaskFile(job.path, "pending", reason) for job in settling]
        self._add_report(files)

    # --- pruning ------------------------------------------------------------------------------

    def _prune(self, missing: list[str]) -> None:
        """Remove index entries of in-place files that are gone, and forget gone files."""
        gone = [path for path in missing if not os.path.lexists(path)]
        if not gone:
            return
        try:
            with (
                self.context.engine.connect().execution_options(write=True) as connection,
                connection.begin(),
            ):
                removed = 0
                for start in range(0, len(gone), 500):
                    keys = [in_place_key(path) for path in gone[start : start + 500]]
                    rows = connection.execute(
                        select(instances.c.pk, instances.c.series_pk).where(
                            instances.c.storage_key.in_(keys)
                        )
                    ).all()
                    if rows:
                        connection.execute(
                            delete(instances).where(instances.c.pk.in_([r.pk for r in rows]))
                        )
                        prune_empty_parents(connection, {r.series_pk for r in rows})
                    removed += len(rows)
                self.context.files.forget(connection, gone)
        except SQLAlchemyError as exc:
            raise IndexingError(f"The index database failed while pruning: {exc}") from exc
        self.counts.pruned += removed
        LOGGER.info(
            "Pruned %d instances whose files are gone from %s (%d files forgotten)",
            removed,
            self.folder,
            len(gone),
        )

    # --- report and progress -----------------------------------------------------------------

    def _on_skipped(self, entry: SkippedEntry) -> None:
        self._skipped_entries.append(TaskFile(entry.path, "ignored", entry.reason))

    def _report_skipped_entries(self) -> None:
        entries, self._skipped_entries = self._skipped_entries, []
        if entries and not self.watching:
            self.counts.found += len(entries)
            self.counts.ignored += len(entries)
            self._add_report(entries)

    def _add_report(self, files: list[TaskFile]) -> None:
        try:
            with (
                self.context.engine.connect().execution_options(write=True) as connection,
                connection.begin(),
            ):
                self.context.tasks.add_files(connection, self.task_id, files)
        except SQLAlchemyError as exc:
            raise IndexingError(f"The index database failed: {exc}") from exc

    def _progress(self, force: bool = False, save_when_due: bool = False) -> None:
        """Report the counts; ``force`` reports now, not only twice a second.

        With ``save_when_due``, a forced report saves the counts to the index
        (a transaction of its own) only when the interval has passed.
        """
        now = time.monotonic()
        due = now - self._last_progress >= PROGRESS_INTERVAL_SECONDS
        if not force and not due:
            return
        if self.on_progress is not None:
            self.on_progress(self.counts)
        if save_when_due and not due:
            return
        self._last_progress = now
        # An idle watched folder writes nothing; it only reads the cancellation flag.
        counts = dataclasses.astuple(self.counts)
        try:
            if counts == self._saved_counts:
                requested = self.context.tasks.cancel_requested(self.task_id)
            else:
                requested = self.context.tasks.save_progress(self.task_id, self.counts)
                self._saved_counts = counts
            if requested:
                if not self.cancel.is_set():
                    LOGGER.info("Indexing task %d: cancellation requested", self.task_id)
                self.cancel.set()
        except SQLAlchemyError as exc:
            raise IndexingError(f"The index database failed: {exc}") from exc


class _BatchQueue:
    """Writes batches on one writer thread, one at a time, in the order they are put."""

    def __init__(
        self,
        executor: concurrent.futures.ThreadPoolExecutor,
        write: Callable[[list[ReadResult]], None],
    ) -> None:
        self.executor = executor
        self.write = write
        self.writing: concurrent.futures.Future[None] | None = None

    def put(self, batch: list[ReadResult]) -> None:
        """Wait for the batch being written, then start writing ``batch``.

        Raises
        ------
        IndexingError
            If the previous batch failed; ``batch`` is then not written.
        """
        self.wait()
        self.writing = self.executor.submit(self.write, batch)

    def wait(self) -> None:
        """Wait for the batch being written; raise its error, if any."""
        writing, self.writing = self.writing, None
        if writing is not None:
            writing.result()

    def wait_quietly(self) -> None:
        """Wait for the batch being written and ignore its error (already being handled)."""
        writing, self.writing = self.writing, None
        if writing is not None:
            concurrent.futures.wait([writing])
