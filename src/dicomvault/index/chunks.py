"""The chunks of bucket indexing tasks: listed once, claimed and indexed by any server process.

A bucket task's listing writes the objects to index in chunks, each with
the task's counts of what was listed, in one transaction per page. Every
server process claims queued chunks (or chunks whose holder's lease
expired) and indexes them. A chunk is marked done in the transaction that
indexes it, together with the task's counts, so each chunk counts exactly
once however many processes tried it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from collections.abc import Sequence

from sqlalchemy import ColumnElement, Connection, Engine, and_, func, insert, or_, select, update

from dicomvault.index.schema import ingest_task_chunks, ingest_tasks

LOGGER = logging.getLogger(__name__)

# A chunk that failed this many times is given up: its objects are reported failed.
MAX_ATTEMPTS = 3


class ChunkLostError(RuntimeError):
    """Another process took the chunk over after this one's lease expired."""


@dataclasses.dataclass(frozen=True)
class ClaimedChunk:
    """A chunk this process holds: its task, and the objects as (URL, size, ETag)."""

    pk: int
    task_id: int
    jobs: list[tuple[str, int, str]]
    attempts: int


@dataclasses.dataclass(frozen=True)
class ListedPage:
    """What one page of a bucket listing adds to a task.

    ``chunks`` holds the objects to index, already cut into chunks;
    ``found`` counts every object listed, ``skipped`` those unchanged since
    they were last indexed; ``listed_until`` is the last key of the page.
    """

    chunks: Sequence[Sequence[tuple[str, int, str]]]
    found: int
    skipped: int
    listed_until: str


@dataclasses.dataclass(frozen=True)
class ChunkCounts:
    """How many chunks of a task are in each status."""

    queued: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def open(self) -> int:
        """Chunks still to be indexed: queued or running."""
        return self.queued + self.running


class ChunkQueue:
    """Writes, claims, completes and releases the chunks of bucket tasks."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add_page(self, task_id: int, page: ListedPage) -> None:
        """Store a page of the listing: its chunks, the task's counts and how far it got."""
        now = _now()
        with (
            self.engine.connect().execution_options(write=True) as connection,
            connection.begin(),
        ):
            if page.chunks:
                connection.execute(
                    insert(ingest_task_chunks),
                    [
                        {
                            "task_pk": task_id,
                            "status": "queued",
                            "jobs": json.dumps([list(job) for job in chunk]),
                            "job_count": len(chunk),
                            "owner": "",
                            "attempts": 0,
                        }
                        for chunk in page.chunks
                    ],
                )
            connection.execute(
                update(ingest_tasks)
                .where(ingest_tasks.c.pk == task_id)
                .values(
                    files_found=ingest_tasks.c.files_found + page.found,
                    files_skipped=ingest_tasks.c.files_skipped + page.skipped,
                    listed_until=page.listed_until,
                )
            )
        LOGGER.debug(
            "Task %d: listed %d objects up to %s at %s",
            task_id,
            page.found,
            page.listed_until,
            now.isoformat(),
        )

    def listed_until(self, task_id: int) -> str:
        """Return the last object key the task's listing stored, or '' before the first page."""
        with self.engine.connect() as connection:
            value = connection.execute(
                select(ingest_tasks.c.listed_until).where(ingest_tasks.c.pk == task_id)
            ).scalar_one_or_none()
        return str(value or "")

    def finish_listing(self, task_id: int) -> None:
        """Record that the task's listing reached the end of the bucket prefix."""
        with (
            self.engine.connect().execution_options(write=True) as connection,
            connection.begin(),
        ):
            connection.execute(
                update(ingest_tasks).where(ingest_tasks.c.pk == task_id).values(listing_done=True)
            )

    def claim(self, owner: str, seconds: float, limit: int) -> list[ClaimedChunk]:
        """Claim up to ``limit`` chunks of running, uncancelled tasks for ``seconds``.

        Queued chunks come first in task order; chunks whose holder's lease
        expired are claimed too, because their holder stopped.
        """
        if limit <= 0:
            return []
        now = _now()
        available = (
            select(ingest_task_chunks.c.pk)
            .join(ingest_tasks, ingest_tasks.c.pk == ingest_task_chunks.c.task_pk)
            .where(
                ingest_tasks.c.status == "running",
                ingest_tasks.c.cancel_requested.is_(False),
                _claimable(now),
            )
            .order_by(ingest_task_chunks.c.pk)
        )
        # Every server polls twice a second, so an idle poll must not take
        # SQLite's write lock: only a read finds whether there is work.
        with self.engine.connect() as connection:
            if connection.execute(available.limit(1)).first() is None:
                return []
        candidates = available.limit(limit).with_for_update(skip_locked=True, of=ingest_task_chunks)
        with (
            self.engine.connect().execution_options(write=True) as connection,
            connection.begin(),
        ):
            pks = list(connection.execute(candidates).scalars())
            if not pks:
                return []
            rows = connection.execute(
                update(ingest_task_chunks)
                .where(ingest_task_chunks.c.pk.in_(pks), _claimable(now))
                .values(
                    status="running",
                    owner=owner,
                    lease_expires_at=now + datetime.timedelta(seconds=seconds),
                    attempts=ingest_task_chunks.c.attempts + 1,
                )
                .returning(
                    ingest_task_chunks.c.pk,
                    ingest_task_chunks.c.task_pk,
                    ingest_task_chunks.c.jobs,
                    ingest_task_chunks.c.attempts,
                )
            ).all()
        claimed = [
            ClaimedChunk(
                row.pk,
                row.task_pk,
                [(str(url), int(size), str(etag)) for url, size, etag in json.loads(row.jobs)],
                int(row.attempts),
            )
            for row in sorted(rows, key=lambda row: row.pk)
        ]
        if claimed:
            LOGGER.debug("%s claimed chunks %s", owner, [chunk.pk for chunk in claimed])
        return claimed

    def renew(self, owner: str, seconds: float) -> int:
        """Extend the leases of every chunk ``owner`` is indexing; return how many."""
        with (
            self.engine.connect().execution_options(write=True) as connection,
            connection.begin(),
        ):
            result = connection.execute(
                update(ingest_task_chunks)
                .where(
                    ingest_task_chunks.c.owner == owner, ingest_task_chunks.c.status == "running"
                )
                .values(lease_expires_at=_now() + datetime.timedelta(seconds=seconds))
            )
        return int(result.rowcount)

    @staticmethod
    def complete(
        connection: Connection,
        chunk_pk: int,
        owner: str,
        task_id: int,
        counts: dict[str, int],
    ) -> None:
        """Mark the chunk done and add ``counts`` to its task, in the caller's transaction.

        ``counts`` maps count names ("indexed", "failed", "ignored",
        "pending") to what the chunk adds.

        Raises
        ------
        ChunkLostError
            If ``owner`` no longer owns the chunk. The caller must roll back.
        """
        done = connection.execute(
            update(ingest_task_chunks)
            .where(
                ingest_task_chunks.c.pk == chunk_pk,
                ingest_task_chunks.c.owner == owner,
                ingest_task_chunks.c.status == "running",
            )
            .values(status="done", lease_expires_at=None)
        ).rowcount
        if done != 1:
            raise ChunkLostError(f"Chunk {chunk_pk} of task {task_id} was taken over")
        connection.execute(
            update(ingest_tasks)
            .where(ingest_tasks.c.pk == task_id)
            .values(
                {
                    f"files_{name}": ingest_tasks.c[f"files_{name}"] + value
                    for name, value in counts.items()
                }
            )
        )

    def release(self, chunk: ClaimedChunk, owner: str, error: str) -> bool:
        """Put a chunk that failed back in the queue; give it up after MAX_ATTEMPTS tries.

        A chunk given up is marked "failed", and its objects are reported
        failed with ``error`` and counted as failed. Returns whether the
        chunk was given up.
        """
        give_up = chunk.attempts >= MAX_ATTEMPTS
        with (
            self.engine.connect().execution_options(write=True) as connection,
            connection.begin(),
        ):
            released = connection.execute(
                update(ingest_task_chunks)
                .where(
                    ingest_task_chunks.c.pk == chunk.pk,
                    ingest_task_chunks.c.owner == owner,
                    ingest_task_chunks.c.status == "running",
                )
                .values(status="failed" if give_up else "queued", owner="", lease_expires_at=None)
            ).rowcount
            if released and give_up:
                # Imported here: tasks.py imports nothing of this module.
                from dicomvault.index.tasks import TaskFile, TaskStore

                reason = f"Not indexed after {chunk.attempts} attempts: {error}"
                files = [TaskFile(url, "failed", reason) for url, _, _ in chunk.jobs]
                TaskStore(self.engine).add_files(connection, chunk.task_id, files)
                connection.execute(
                    update(ingest_tasks)
                    .where(ingest_tasks.c.pk == chunk.task_id)
                    .values(files_failed=ingest_tasks.c.files_failed + len(chunk.jobs))
                )
        if give_up:
            LOGGER.error("Task %d: gave up chunk %d: %s", chunk.task_id, chunk.pk, error)
        else:
            LOGGER.warning(
                "Task %d: chunk %d failed, queued again: %s", chunk.task_id, chunk.pk, error
            )
        return bool(released and give_up)

    def give_back(self, chunks: Sequence[ClaimedChunk], owner: str) -> None:
        """Return chunks claimed but not started to the queue, as if never claimed."""
        if not chunks:
            return
        with (
            self.engine.connect().execution_options(write=True) as connection,
            connection.begin(),
        ):
            connection.execute(
                update(ingest_task_chunks)
                .where(
                    ingest_task_chunks.c.pk.in_([chunk.pk for chunk in chunks]),
                    ingest_task_chunks.c.owner == owner,
                    ingest_task_chunks.c.status == "running",
                )
                .values(
                    status="queued",
                    owner="",
                    lease_expires_at=None,
                    attempts=ingest_task_chunks.c.attempts - 1,
                )
            )

    def cancel_queued(self, task_id: int) -> int:
        """Mark the task's queued chunks cancelled; return how many."""
        with (
            self.engine.connect().execution_options(write=True) as connection,
            connection.begin(),
        ):
            result = connection.execute(
                update(ingest_task_chunks)
                .where(
                    ingest_task_chunks.c.task_pk == task_id,
                    or_(
                        ingest_task_chunks.c.status == "queued",
                        and_(
                            ingest_task_chunks.c.status == "running",
                            ingest_task_chunks.c.lease_expires_at < _now(),
                        ),
                    ),
                )
                .values(status="cancelled", owner="", lease_expires_at=None)
            )
        return int(result.rowcount)

    def counts(self, task_id: int) -> ChunkCounts:
        """Return how many chunks of the task are in each status."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(ingest_task_chunks.c.status, func.count())
                .where(ingest_task_chunks.c.task_pk == task_id)
                .group_by(ingest_task_chunks.c.status)
            ).all()
        return ChunkCounts(**{str(status): int(count) for status, count in rows})


def _claimable(now: datetime.datetime) -> ColumnElement[bool]:
    return or_(
        ingest_task_chunks.c.status == "queued",
        and_(
            ingest_task_chunks.c.status == "running",
            ingest_task_chunks.c.lease_expires_at < now,
        ),
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
