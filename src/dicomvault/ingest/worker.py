"""The work of one worker process: read a chunk of files and index it in one transaction.

Each worker opens its own connection to the index and commits its chunks
itself, so that the parent process only scans, hands out chunks and adds
up the counts. With SQLite the workers take turns at the database's write
lock; the reading of one overlaps the commit of the other.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from dicomvault.index.chunks import ChunkLostError, ChunkQueue
from dicomvault.index.database import create_index_engine
from dicomvault.index.files import FileState, IndexedFiles
from dicomvault.index.tasks import TaskFile, TaskStore
from dicomvault.index.writer import IndexOutcome, IndexWriter, StoredInstance
from dicomvault.ingest.jobs import ChunkOptions, ChunkSummary, FileJob, Mode
from dicomvault.ingest.reader import (
    Outcome,
    ReadResult,
    import_storage,
    read_files,
    settle_copies,
)

LOGGER = logging.getLogger(__name__)

CHANGED_REASON = "The object changed while it was read; index the bucket again to read it"
DUPLICATE_REASON = (
    "An instance with SOP Instance UID {uid} is already indexed and "
    "storage.duplicate_policy is reject"
)


class _Index:
    """The index objects of one database, kept for the life of the worker."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = create_index_engine(url, bulk_writer=True)
        self.writer = IndexWriter(self.engine)
        self.files = IndexedFiles(self.engine)
        self.tasks = TaskStore(self.engine)


_indexes: dict[str, _Index] = {}


def index_files(jobs: list[FileJob], options: ChunkOptions) -> ChunkSummary:
    """Read the files of ``jobs`` and index them, their states and report in one transaction.

    Files that cannot be indexed are recorded in the task's report with the
    reason. In import mode, the copies of files not indexed are deleted,
    and so are the files that indexed instances replaced, after the commit.
    Chunks of different workers commit in any order, so when two files of
    one folder hold the same SOP Instance, which one the index keeps under
    the "replace" policy is not defined.
    """
    results = read_files(jobs, options.read)
    index = _indexes.get(options.index_url)
    if index is None:
        index = _indexes[options.index_url] = _Index(options.index_url)
    return _Chunk(results, options, index).write()


class _Chunk:
    """One chunk's results on their way into the index."""

    def __init__(
        self,
        results: list[ReadResult],
        options: ChunkOptions,
        index: _Index,
    ) -> None:
        self.results = results
        self.options = options
        self.index = index
        self.read = [r for r in results if r.outcome is Outcome.INSTANCE and r.header is not None]
        # Files not read as instances; set once, kept across retries of the transaction.
        self.unreadable: list[TaskFile] = []
        self.unreadable_states: list[FileState] = []
        self.report: list[TaskFile] = []
        self.duplicates: list[ReadResult] = []

    def write(self) -> ChunkSummary:
        """Index the chunk; return its summary, with ``error`` set if the database failed."""
        changed = [r.job for r in self.results if r.outcome is Outcome.CHANGED]
        summary = ChunkSummary(changed=[] if self.options.chunk_pk else changed)
        self._report_unreadable()
        if self.options.chunk_pk:
            # A bucket task lists each object once: a changed one waits for the next task.
            self.unreadable += [TaskFile(job.path, "pending", CHANGED_REASON) for job in changed]
        stored = [
            StoredInstance(r.header, r.storage_key, r.size, "", r.sha256)  # type: ignore[arg-type]
            for r in self.read
        ]
        try:
            outcomes = self.index.writer.add_instances(
                stored, self.options.replace, also=self._record
            )
        except SQLAlchemyError as exc:
            self._delete_copies(self.read)
            settle_copies(r.storage_key for r in self.read)
            LOGGER.debug("Indexing a chunk of %d files failed: %s", len(self.results), exc)
            summary.error = f"The index database failed: {exc}"
            return summary
        except ChunkLostError as exc:
            self._delete_copies(self.read)
            settle_copies(r.storage_key for r in self.read)
            LOGGER.debug("%s; its results are dropped", exc)
            summary.lost = True
            return summary

        # After the commit: files the new instances replaced, and copies not indexed.
        for outcome in outcomes:
            if outcome is not None and outcome.replaced_storage_key:
                import_storage(self.options.read).delete(outcome.replaced_storage_key)
        self._delete_copies(self.duplicates)
        settle_copies(r.storage_key for r in self.read)

        summary.indexed = len(self.read) - len(self.duplicates)
        summary.failed = sum(1 for f in self.report if f.outcome == "failed")
        summary.ignored = sum(1 for f in self.report if f.outcome == "ignored")
        return summary

    def _report_unreadable(self) -> None:
        for result in self.results:
            if result.outcome not in (Outcome.FAILED, Outcome.IGNORED):
                continue
            LOGGER.debug("Not indexing %s: %s", result.job.path, result.reason)
            self.unreadable.append(TaskFile(result.job.path, str(result.outcome), result.reason))
            # Without a remembered state, the next task reads the file again.
            if not result.retry:
                state = self._state(result, str(result.outcome), reason=result.reason)
                self.unreadable_states.append(state)

    def _record(self, connection: Connection, outcomes: list[IndexOutcome | None]) -> None:
        # Called inside the transaction, so it may run again after a retry.
        report = list(self.unreadable)
        states = list(self.unreadable_states)
        self.duplicates = []
        for result, outcome in zip(self.read, outcomes, strict=True):
            uid = result.header.sop_instance_uid  # type: ignore[union-attr]
            if outcome is None:
                self.duplicates.append(result)
                reason = DUPLICATE_REASON.format(uid=uid)
                report.append(TaskFile(result.job.path, "failed", reason))
                states.append(self._state(result, "failed", reason=reason))
            else:
                states.append(self._state(result, "indexed", uid, result.storage_key))
        self.index.files.record(connection, states)
        self.index.tasks.add_files(connection, self.options.task_id, report)
        self.report = report
        if self.options.chunk_pk:
            ChunkQueue.complete(
                connection,
                self.options.chunk_pk,
                self.options.owner,
                self.options.task_id,
                {
                    "indexed": len(self.read) - len(self.duplicates),
                    "failed": sum(1 for f in report if f.outcome == "failed"),
                    "ignored": sum(1 for f in report if f.outcome == "ignored"),
                    "pending": sum(1 for f in report if f.outcome == "pending"),
                },
            )

    def _state(
        self, result: ReadResult, outcome: str, uid: str = "", key: str = "", reason: str = ""
    ) -> FileState:
        job = result.job
        mode = str(self.options.read.mode)
        return FileState(
            job.path, job.size, job.mtime_ns, mode, outcome, uid, key, reason, job.etag
        )

    def _delete_copies(self, results: list[ReadResult]) -> None:
        if self.options.read.mode is Mode.IMPORT:
            storage = import_storage(self.options.read)
            for result in results:
                storage.delete(result.storage_key)
