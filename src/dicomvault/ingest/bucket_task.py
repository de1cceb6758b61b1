"""Lead a bucket indexing task: list the objects into chunks, then finish once all are indexed.

One process at a time leads a task, the one holding the lease
"task:<id>" (see :mod:`dicomvault.cluster.keeper`). It lists the bucket
prefix page by page; each page's new and changed objects become chunks
that every server process may claim (see
:mod:`dicomvault.ingest.chunk_runner`). If the leader stops, another
process takes the lease over, continues the listing after the last key
stored, and finishes the task.

A task with pruning lists the prefix once more after every chunk is
indexed. It removes from the index the instances indexed in place from
objects that are no longer there, once a HEAD request confirms that each
is gone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from sqlalchemy.exc import SQLAlchemyError

from dicomvault.index.chunks import ChunkQueue, ListedPage
from dicomvault.index.files import FileState
from dicomvault.index.hierarchy import remove_instances_stored_at
from dicomvault.index.tasks import TaskCounts, TaskRecord
from dicomvault.ingest.bucket import (
    BucketError,
    BucketLocation,
    ObjectEntry,
    list_objects,
    object_url,
    parse_bucket_url,
    source_client,
    split_object_url,
)
from dicomvault.ingest.indexer import (
    CHUNK_BYTES,
    IngestContext,
    pruned_report,
    split_into_chunks,
)
from dicomvault.ingest.jobs import FileJob
from dicomvault.storage.base import StorageError
from dicomvault.storage.in_bucket import in_bucket_exists, in_bucket_key

LOGGER = logging.getLogger(__name__)

POLL_SECONDS = 0.5


class BucketTaskLeader:
    """Leads one bucket task until it is finished, cancelled, or handed over.

    Parameters
    ----------
    context : IngestContext
        Settings, index and storage.
    task : TaskRecord
        The task, whose lease this process holds.
    stop : threading.Event
        Set when this process stops: the task is left for another process.
    lost : threading.Event
        Set when the lease was lost: another process leads the task now.
    on_progress : callable, optional
        Called with the task's counts, from every process, about twice a second.
    """

    def __init__(
        self,
        context: IngestContext,
        task: TaskRecord,
        stop: threading.Event,
        lost: threading.Event,
        on_progress: Callable[[TaskCounts], None] | None = None,
    ) -> None:
        self.context = context
        self.task = task
        self.stop = stop
        self.lost = lost
        self.on_progress = on_progress
        self.chunks = ChunkQueue(context.engine)

    def run(self) -> str:
        """Lead the task; return its final status, or "handed over" if it is left to another.

        The final status is "completed" (also when some objects failed: the
        report lists them), "cancelled", or "failed" when the bucket cannot
        be listed or the index database failed; the message then gives the reason.
        """
        task_id = self.task.id
        tasks = self.context.tasks
        try:
            location = parse_bucket_url(self.task.path)
            tasks.start(task_id)
            if self.task.started_at is None:
                LOGGER.info(
                    "Indexing task %d started: %s %s", task_id, self.task.mode, location.url
                )
            else:
                LOGGER.info("Indexing task %d resumed: %s", task_id, location.url)
            if not self.task.listing_done:
                self._list(location)
            return self._wait_for_chunks()
        except (BucketError, ValueError) as exc:
            LOGGER.error("Indexing task %d failed: %s", task_id, exc)
            return self._finish("failed", str(exc))
        except SQLAlchemyError as exc:
            LOGGER.error("Indexing task %d: the index database failed: %s", task_id, exc)
            # Left running: the lease expires and a process that reaches the database resumes it.
            return "handed over"

    # --- listing ---------------------------------------------------------------------------

    def _list(self, location: BucketLocation) -> None:
        known = self.context.files.under(location.url, exact_prefix=True)
        listed_until = self.chunks.listed_until(self.task.id)
        client = source_client(self.context.settings.storage)
        batch = self.context.settings.ingest.batch_size
        for page in list_objects(client, location, start_after=listed_until):
            if self._should_stop() or self._cancelled():
                return
            if not page:
                continue
            jobs, skipped = self._new_or_changed(location, page, known)
            chunks = [
                [(job.path, job.size, job.etag) for job in chunk]
                for chunk in split_into_chunks(jobs, batch, CHUNK_BYTES)
            ]
            self.chunks.add_page(self.task.id, ListedPage(chunks, len(page), skipped, page[-1].key))
            self._report_progress()
        self.chunks.finish_listing(self.task.id)
        LOGGER.info("Indexing task %d: listing of %s complete", self.task.id, location.url)

    def _new_or_changed(
        self, location: BucketLocation, page: Sequence[ObjectEntry], known: dict[str, FileState]
    ) -> tuple[list[FileJob], int]:
        jobs: list[FileJob] = []
        skipped = 0
        for entry in page:
            url = object_url(location.bucket, entry.key)
            state = known.get(url)
            if (
                state is not None
                and state.size == entry.size
                and state.etag == entry.etag
                and state.mode == self.task.mode
            ):
                skipped += 1
            else:
                jobs.append(FileJob(url, entry.size, 0, entry.etag))
        return jobs, skipped

    # --- waiting for the chunks --------------------------------------------------------------

    def _wait_for_chunks(self) -> str:
        while True:
            if self._should_stop():
                return "handed over"
            if self._cancelled():
                self.chunks.cancel_queued(self.task.id)
                if self.chunks.counts(self.task.id).running == 0:
                    return self._finish("cancelled")
            elif self.chunks.counts(self.task.id).open == 0:
                if self.task.prune and not self._prune():
                    continue  # stopped or cancelled while pruning; the checks above end the task
                return self._finish("completed")
            self._report_progress()
            self.stop.wait(POLL_SECONDS)

    # --- pruning ----------------------------------------------------------------------------

    def _prune(self) -> bool:
        """Remove the index entries of objects gone from the prefix; return False if stopped.

        Raises
        ------
        BucketError
            If the bucket cannot be listed, or S3 cannot tell whether an object exists.
        """
        location = parse_bucket_url(self.task.path)
        known = self.context.files.under(location.url, exact_prefix=True)
        if not known:
            return True
        client = source_client(self.context.settings.storage)
        listed: set[str] = set()
        for page in list_objects(client, location):
            if self._should_stop() or self._cancelled():
                return False
            listed.update(object_url(location.bucket, entry.key) for entry in page)
        gone_keys: dict[str, str] = {}
        for url in known.keys() - listed:
            storage_key = in_bucket_key(*split_object_url(url))
            try:
                if not in_bucket_exists(client, storage_key):
                    gone_keys[url] = storage_key
            except StorageError as exc:
                raise BucketError(f"Cannot tell whether {url} still exists: {exc}") from exc
        if gone_keys:
            self._remove_gone(location, gone_keys)
        return True

    def _remove_gone(self, location: BucketLocation, keys: dict[str, str]) -> None:
        """Remove the instances of the gone objects from the index, and forget the objects.

        ``keys`` maps the URL of each object to its storage key.
        """
        with (
            self.context.engine.connect().execution_options(write=True) as connection,
            connection.begin(),
        ):
            removed = remove_instances_stored_at(connection, list(keys.values()))
            self.context.files.forget(connection, list(keys))
            self.context.tasks.add_pruned(connection, self.task.id, len(removed))
            self.context.tasks.add_files(
                connection, self.task.id, pruned_report(keys, removed, "object")
            )
        LOGGER.info(
            "Indexing task %d: pruned %d instances whose objects are gone from %s "
            "(%d objects forgotten)",
            self.task.id,
            len(removed),
            location.url,
            len(keys),
        )

    def _finish(self, status: str, message: str = "") -> str:
        self.context.tasks.finish_status(self.task.id, status, message)
        self._report_progress()
        return status

    # --- state --------------------------------------------------------------------------------

    def _should_stop(self) -> bool:
        return self.stop.is_set() or self.lost.is_set()

    def _cancelled(self) -> bool:
        return self.context.tasks.cancel_requested(self.task.id)

    def _report_progress(self) -> None:
        if self.on_progress is not None:
            record = self.context.tasks.get(self.task.id)
            if record is not None:
                self.on_progress(record.counts)
