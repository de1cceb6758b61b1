"""One pass of an indexing task over a folder: scan, then read and index chunks in workers.

The pass keeps the index consistent at every moment: each chunk of files is
indexed in one transaction, together with the remembered state of those
files and the task's report entries (see :mod:`dicomvault.ingest.worker`).
A cancelled pass stops between chunks.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from dicomvault.config import Settings
from dicomvault.events import EventBus, FilesIndexed
from dicomvault.index.files import IndexedFiles
from dicomvault.index.hierarchy import remove_instances_stored_at
from dicomvault.index.tasks import TaskCounts, TaskFile, TaskStore
from dicomvault.ingest.jobs import (
    ChunkOptions,
    ChunkSummary,
    FileJob,
    Mode,
    ReadOptions,
    index_chunk,
)
from dicomvault.ingest.pool import ReaderPool
from dicomvault.ingest.scan import SkippedEntry, scan_folder
from dicomvault.recovery import journal_directory
from dicomvault.storage.filesystem import FilesystemStorage
from dicomvault.storage.in_place import in_place_key

if TYPE_CHECKING:
    from dicomvault.storage.encrypted import EncryptedStorage
    from dicomvault.storage.s3 import S3Storage

LOGGER = logging.getLogger(__name__)

MIN_CHUNK_FILES = 16
# A chunk is cut before this many bytes of files, so that a cancelled pass
# waits for little work, and an import has few copies not yet indexed.
CHUNK_BYTES = 256 * 1024 * 1024
# Chunks queued per worker: one being indexed, one waiting, so that no
# worker waits for this process.
CHUNKS_IN_FLIGHT_PER_WORKER = 2
PROGRESS_INTERVAL_SECONDS = 0.5
STOP_TIMEOUT_SECONDS = 60.0  # a failed pass waits this long for each chunk in flight


_Chunk = concurrent.futures.Future[ChunkSummary]


class IndexingError(RuntimeError):
    """The pass cannot go on: the index database or the storage failed."""


@dataclasses.dataclass
class IngestContext:
    """The settings, index, storage and worker pool that indexing passes share.

    The workers open their own connections to the index at
    ``engine``'s URL, so the index must be a database file or server, not
    an in-memory SQLite database. ``events``, when given, receives a
    :class:`~dicomvault.events.FilesIndexed` event per chunk of files.
    """

    settings: Settings
    engine: Engine
    storage: FilesystemStorage | S3Storage | EncryptedStorage
    pool: ReaderPool
    events: EventBus | None = None

    def __post_init__(self) -> None:
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
        storage = context.settings.storage
        self.options = ChunkOptions(
            ReadOptions(
                mode,
                context.storage.location,
                encryption if encryption.enabled else None,
                storage if storage.backend == "s3" else None,
                journal_dir=str(journal_directory(context.settings.data_dir)),
            ),
            context.engine.url.render_as_string(hide_password=False),
            task_id,
            context.settings.storage.duplicate_policy == "replace",
        )
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
        """Have the workers read and index the files, chunk by chunk; return those that changed.

        Each worker indexes its chunk in a transaction of its own, so this
        process only hands out chunks and adds up the counts. A cancelled
        pass hands out no more chunks and waits for those being indexed.

        Raises
        ------
        IndexingError
            If a chunk could not be indexed; chunks already committed stay.
        """
        changed: list[FileJob] = []
        chunks = split_into_chunks(jobs, self._chunk_files(len(jobs)), CHUNK_BYTES)
        max_in_flight = CHUNKS_IN_FLIGHT_PER_WORKER * self.context.pool.workers
        in_flight: set[_Chunk] = set()
        position = 0
        try:
            while position < len(chunks) or in_flight:
                while (
                    not self.cancel.is_set()
                    and position < len(chunks)
                    and len(in_flight) < max_in_flight
                ):
                    chunk = chunks[position]
                    in_flight.add(self.context.pool.submit(index_chunk, chunk, self.options))
                    position += 1
                if self.cancel.is_set():
                    # Chunks not started yet are dropped; those started finish.
                    in_flight = {future for future in in_flight if not future.cancel()}
                if not in_flight:
                    break
                done, _ = concurrent.futures.wait(
                    in_flight, PROGRESS_INTERVAL_SECONDS, concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    in_flight.discard(future)
                    changed += self._add_summary(future)
                self._progress(force=bool(done), save_when_due=True)
        finally:
            # Chunks handed out are indexed or not as a whole; wait for them,
            # so that the task ends with the counts of what was written.
            for future in in_flight:
                concurrent.futures.wait([future], STOP_TIMEOUT_SECONDS)
                if future.done() and not future.cancelled() and future.exception() is None:
                    self._count(future.result())
        return changed

    def _chunk_files(self, job_count: int) -> int:
        """Files per chunk: the batch size, smaller when a few chunks would leave workers idle."""
        per_worker = -(-job_count // (2 * self.context.pool.workers))
        return min(self.context.settings.ingest.batch_size, max(MIN_CHUNK_FILES, per_worker))

    def _add_summary(self, future: _Chunk) -> list[FileJob]:
        try:
            summary = future.result()
        except Exception as exc:  # a worker died or failed outside the database
            raise IndexingError(f"A worker process failed: {exc}") from exc
        if summary.error:
            raise IndexingError(summary.error)
        self._count(summary)
        return summary.changed

    def _count(self, summary: ChunkSummary) -> None:
        self.counts.indexed += summary.indexed
        self.counts.failed += summary.failed
        self.counts.ignored += summary.ignored
        if self.context.events is not None:
            self.context.events.publish(
                FilesIndexed(self.task_id, summary.indexed, summary.failed, summary.ignored)
            )

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
                keys = {path: in_place_key(path) for path in gone}
                removed = remove_instances_stored_at(connection, list(keys.values()))
                self.context.files.forget(connection, gone)
                self.context.tasks.add_files(
                    connection, self.task_id, pruned_report(keys, removed, "file")
                )
        except SQLAlchemyError as exc:
            raise IndexingError(f"The index database failed while pruning: {exc}") from exc
        self.counts.pruned += len(removed)
        LOGGER.info(
            "Pruned %d instances whose files are gone from %s (%d files forgotten)",
            len(removed),
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


def split_into_chunks(jobs: list[FileJob], max_files: int, max_bytes: int) -> list[list[FileJob]]:
    """Split the jobs into chunks of at most ``max_files`` files and about ``max_bytes`` bytes."""
    chunks: list[list[FileJob]] = []
    chunk: list[FileJob] = []
    size = 0
    for job in jobs:
        if chunk and (len(chunk) >= max_files or size + job.size > max_bytes):
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(job)
        size += job.size
    if chunk:
        chunks.append(chunk)
    return chunks


def pruned_report(keys: Mapping[str, str], removed: Mapping[str, str], kind: str) -> list[TaskFile]:
    """Return the report entries of pruned files or objects, one per instance removed.

    ``keys`` maps each gone path or URL to its storage key, ``removed`` maps
    the storage keys of the removed instances to their SOP Instance UIDs,
    and ``kind`` is "file" or "object", for the reason.
    """
    return [
        TaskFile(
            path,
            "pruned",
            f"The {kind} is gone; instance {removed[key]} was removed from the index",
        )
        for path, key in keys.items()
        if key in removed
    ]
