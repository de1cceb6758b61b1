"""Claim chunks of bucket tasks and have the worker processes index them.

Every server process runs a chunk runner, and so does ``dicomvault index
s3://...`` while it leads its task, so the chunks of a bucket task are
indexed by all of them. Each chunk is marked done in the transaction that
indexes it; a chunk whose holder stops is claimed again once its lease
expires.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading

from sqlalchemy.exc import SQLAlchemyError

from dicomvault.index.chunks import ChunkQueue, ClaimedChunk
from dicomvault.ingest.indexer import CHUNKS_IN_FLIGHT_PER_WORKER, IngestContext
from dicomvault.ingest.jobs import (
    ChunkOptions,
    ChunkSummary,
    FileJob,
    Mode,
    ReadOptions,
    index_chunk,
)
from dicomvault.recovery import journal_directory

LOGGER = logging.getLogger(__name__)

POLL_SECONDS = 0.5
STOP_TIMEOUT_SECONDS = 60.0


class ChunkRunner:
    """Keeps the worker pool busy with chunks of bucket tasks until :meth:`stop`.

    ``owner`` is the lease owner id the chunks are claimed under; the
    caller's :class:`~dicomvault.cluster.keeper.LeaseKeeper` renews them.
    """

    def __init__(self, context: IngestContext, owner: str) -> None:
        self.context = context
        self.owner = owner
        self.queue = ChunkQueue(context.engine)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._modes: dict[int, Mode] = {}

    def start(self) -> None:
        """Start claiming chunks in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="chunk-runner", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for chunks now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop claiming; give back chunks not started and wait for those being indexed."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                LOGGER.warning("The chunk runner did not stop within %.0f s", timeout)

    def _run(self) -> None:
        in_flight: dict[concurrent.futures.Future[ChunkSummary], ClaimedChunk] = {}
        capacity = CHUNKS_IN_FLIGHT_PER_WORKER * self.context.pool.workers
        try:
            while not self._stop.is_set():
                for chunk in self._claim(capacity - len(in_flight)):
                    future = self.context.pool.submit(
                        index_chunk,
                        [FileJob(url, size, 0, etag) for url, size, etag in chunk.jobs],
                        self._options(chunk),
                    )
                    in_flight[future] = chunk
                if not in_flight:
                    self._wake.wait(POLL_SECONDS)
                    self._wake.clear()
                    continue
                done, _ = concurrent.futures.wait(
                    in_flight, POLL_SECONDS, concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    self._settle(in_flight.pop(future), future)
        except Exception:
            LOGGER.exception("The chunk runner of %s stopped unexpectedly", self.owner)
        finally:
            self._wind_down(in_flight)

    def _claim(self, limit: int) -> list[ClaimedChunk]:
        if limit <= 0:
            return []
        try:
            return self.queue.claim(self.owner, self.context.settings.server.lease_seconds, limit)
        except SQLAlchemyError as exc:
            LOGGER.error("Cannot claim chunks of bucket tasks: %s", exc)
            self._stop.wait(POLL_SECONDS * 4)
            return []

    def _options(self, chunk: ClaimedChunk) -> ChunkOptions:
        mode = self._modes.get(chunk.task_id)
        if mode is None:
            record = self.context.tasks.get(chunk.task_id)
            mode = Mode(record.mode) if record is not None else Mode.IN_PLACE
            self._modes[chunk.task_id] = mode
        settings = self.context.settings
        encryption = settings.encryption
        storage = settings.storage
        return ChunkOptions(
            ReadOptions(
                mode,
                self.context.storage.location,
                encryption if encryption.enabled else None,
                storage if storage.backend == "s3" else None,
                source=storage,
                journal_dir=str(journal_directory(settings.data_dir)),
            ),
            self.context.engine.url.render_as_string(hide_password=False),
            chunk.task_id,
            storage.duplicate_policy == "replace",
            chunk_pk=chunk.pk,
            owner=self.owner,
        )

    def _settle(self, chunk: ClaimedChunk, future: concurrent.futures.Future[ChunkSummary]) -> None:
        """Deal with a finished chunk: done, lost to another process, or failed."""
        try:
            summary = future.result()
            error = summary.error
            if summary.lost:
                LOGGER.info("Task %d: another process took chunk %d", chunk.task_id, chunk.pk)
                return
        except concurrent.futures.CancelledError:
            self.queue.give_back([chunk], self.owner)
            return
        except Exception as exc:  # a worker died or failed outside the database
            error = f"A worker process failed: {exc}"
        if not error:
            LOGGER.info(
                "Task %d: chunk %d of %d objects indexed by %s",
                chunk.task_id,
                chunk.pk,
                len(chunk.jobs),
                self.owner,
            )
            return
        if error:
            try:
                self.queue.release(chunk, self.owner, error)
            except SQLAlchemyError as exc:
                LOGGER.error("Cannot release chunk %d; its lease expires: %s", chunk.pk, exc)

    def _wind_down(
        self, in_flight: dict[concurrent.futures.Future[ChunkSummary], ClaimedChunk]
    ) -> None:
        not_started = [chunk for future, chunk in in_flight.items() if future.cancel()]
        try:
            self.queue.give_back(not_started, self.owner)
        except SQLAlchemyError as exc:
            LOGGER.warning("Cannot give back chunks; their leases expire: %s", exc)
        running = [future for future in in_flight if not future.cancelled()]
        concurrent.futures.wait(running, STOP_TIMEOUT_SECONDS)
