"""Indexing tasks kept in the index database: status, counts, times and file reports."""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import datetime
import logging
import os
import socket
from collections.abc import Iterator, Sequence

from sqlalchemy import Connection, Engine, func, insert, select, update

from dicomvault.index.schema import ingest_task_files, ingest_tasks

LOGGER = logging.getLogger(__name__)

ACTIVE_STATUSES = ("queued", "running")


class TaskNotFoundError(KeyError):
    """No indexing task has this id."""


@dataclasses.dataclass
class TaskCounts:
    """Files an indexing task has seen, by what became of them.

    ``skipped`` files were unchanged since an earlier task; ``pending`` files
    were still being written when last seen and will be read later.
    """

    found: int = 0
    indexed: int = 0
    skipped: int = 0
    failed: int = 0
    ignored: int = 0
    pending: int = 0
    pruned: int = 0

    @property
    def done(self) -> int:
        """Files dealt with so far: indexed, skipped, failed or ignored."""
        return self.indexed + self.skipped + self.failed + self.ignored


@dataclasses.dataclass(frozen=True)
class TaskFile:
    """A file a task reports, and why: ``outcome`` "failed", "ignored", "pending" or "pruned"."""

    path: str
    outcome: str
    reason: str


@dataclasses.dataclass(frozen=True)
class TaskRecord:
    """One indexing task as stored."""

    id: int
    kind: str
    path: str
    mode: str
    prune: bool
    status: str
    cancel_requested: bool
    counts: TaskCounts
    message: str
    owner: str
    created_at: datetime.datetime
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    resumable: bool = False
    listing_done: bool = False

    @property
    def elapsed_seconds(self) -> float:
        """Seconds from start to finish, or to now while the task runs."""
        if self.started_at is None:
            return 0.0
        end = self.finished_at or datetime.datetime.now(datetime.UTC)
        return max(0.0, (_aware(end) - _aware(self.started_at)).total_seconds())

    @property
    def rate(self) -> float:
        """Files dealt with per second since the start."""
        elapsed = self.elapsed_seconds
        return self.counts.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Estimated seconds left at the current rate, or None if unknown."""
        if self.status != "running" or self.kind != "index" or self.rate <= 0:
            return None
        return max(0, self.counts.found - self.counts.done) / self.rate


def current_owner() -> str:
    """Return "host:pid" of this process, as recorded in the tasks it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


class TaskStore:
    """Creates, updates, lists and cancels indexing tasks."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, kind: str, path: str, mode: str, prune: bool, resumable: bool = False) -> int:
        """Record a new queued task owned by this process; return its id.

        A ``resumable`` task may be run, or resumed after its process
        stopped, by any server process sharing the index; the others are
        run by this process only, and marked interrupted if it stops.
        """
        with self._write() as connection:
            result = connection.execute(
                insert(ingest_tasks)
                .values(
                    kind=kind,
                    path=path,
                    mode=mode,
                    prune=prune,
                    status="queued",
                    cancel_requested=False,
                    owner=current_owner(),
                    created_at=_now(),
                    resumable=resumable,
                )
                .returning(ingest_tasks.c.pk)
            )
            task_id = int(result.scalar_one())
        LOGGER.info("Created indexing task %d (%s, %s) for %s", task_id, kind, mode, path)
        return task_id

    def start(self, task_id: int) -> None:
        """Mark the task running by this process; a resumed task keeps its start time."""
        with self._write() as connection:
            connection.execute(
                update(ingest_tasks)
                .where(ingest_tasks.c.pk == task_id)
                .values(
                    status="running",
                    owner=current_owner(),
                    started_at=func.coalesce(ingest_tasks.c.started_at, _now()),
                )
            )

    def claimable(self) -> builtins.list[TaskRecord]:
        """Return the resumable tasks that are queued or running, oldest first.

        A running one may be held by a live process; the caller checks its lease.
        """
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(ingest_tasks)
                .where(
                    ingest_tasks.c.resumable.is_(True),
                    ingest_tasks.c.status.in_(ACTIVE_STATUSES),
                )
                .order_by(ingest_tasks.c.pk)
            ).all()
        return [_record(row) for row in rows]

    def count_queued(self) -> int:
        """Return how many tasks wait to be run."""
        with self.engine.connect() as connection:
            return int(
                connection.execute(
                    select(func.count()).where(ingest_tasks.c.status == "queued")
                ).scalar_one()
            )

    def finish_status(self, task_id: int, status: str, message: str = "") -> None:
        """Store the final status and message, keeping the counts the chunks added up."""
        with self._write() as connection:
            connection.execute(
                update(ingest_tasks)
                .where(ingest_tasks.c.pk == task_id, ingest_tasks.c.status.in_(ACTIVE_STATUSES))
                .values(status=status, message=message, finished_at=_now())
            )
        record = self.get(task_id)
        if record is not None:
            counts = record.counts
            LOGGER.info(
                "Indexing task %d %s: %d found, %d indexed, %d skipped, %d failed, %d ignored",
                task_id,
                status,
                counts.found,
                counts.indexed,
                counts.skipped,
                counts.failed,
                counts.ignored,
            )

    def save_progress(self, task_id: int, counts: TaskCounts) -> bool:
        """Store the counts; return whether a cancellation was requested."""
        with self._write() as connection:
            connection.execute(
                update(ingest_tasks).where(ingest_tasks.c.pk == task_id).values(**_counts(counts))
            )
            requested = connection.execute(
                select(ingest_tasks.c.cancel_requested).where(ingest_tasks.c.pk == task_id)
            ).scalar_one_or_none()
        return bool(requested)

    def cancel_requested(self, task_id: int) -> bool:
        """Return whether a cancellation of the task was requested."""
        with self.engine.connect() as connection:
            requested = connection.execute(
                select(ingest_tasks.c.cancel_requested).where(ingest_tasks.c.pk == task_id)
            ).scalar_one_or_none()
        return bool(requested)

    def add_files(self, connection: Connection, task_id: int, files: Sequence[TaskFile]) -> None:
        """Record files the task did not index, in the caller's transaction."""
        if files:
            connection.execute(
                insert(ingest_task_files),
                [
                    {"task_pk": task_id, "path": f.path, "outcome": f.outcome, "reason": f.reason}
                    for f in files
                ],
            )

    def add_pruned(self, connection: Connection, task_id: int, count: int) -> None:
        """Add ``count`` pruned instances to the task's counts, in the caller's transaction."""
        connection.execute(
            update(ingest_tasks)
            .where(ingest_tasks.c.pk == task_id)
            .values(files_pruned=ingest_tasks.c.files_pruned + count)
        )

    def finish(self, task_id: int, status: str, counts: TaskCounts, message: str = "") -> None:
        """Store the final status, counts and message, and the finish time."""
        with self._write() as connection:
            connection.execute(
                update(ingest_tasks)
                .where(ingest_tasks.c.pk == task_id)
                .values(status=status, message=message, finished_at=_now(), **_counts(counts))
            )
        LOGGER.info(
            "Indexing task %d %s: %d found, %d indexed, %d skipped, %d failed, %d ignored",
            task_id,
            status,
            counts.found,
            counts.indexed,
            counts.skipped,
            counts.failed,
            counts.ignored,
        )

    def request_cancel(self, task_id: int) -> TaskRecord:
        """Ask the task to stop; return it. A finished task is returned unchanged.

        A queued task is cancelled at once. A running task reads the request
        at its next progress update, within about a second, and stops after
        the batch it is writing.

        Raises
        ------
        TaskNotFoundError
            If no task has this id.
        """
        with self._write() as connection:
            connection.execute(
                update(ingest_tasks)
                .where(ingest_tasks.c.pk == task_id, ingest_tasks.c.status.in_(ACTIVE_STATUSES))
                .values(cancel_requested=True)
            )
            connection.execute(
                update(ingest_tasks)
                .where(ingest_tasks.c.pk == task_id, ingest_tasks.c.status == "queued")
                .values(status="cancelled", finished_at=_now())
            )
        record = self.get(task_id)
        if record is None:
            raise TaskNotFoundError(task_id)
        LOGGER.info("Cancellation of indexing task %d requested; status %s", task_id, record.status)
        return record

    def get(self, task_id: int) -> TaskRecord | None:
        """Return the task with this id, or None."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(ingest_tasks).where(ingest_tasks.c.pk == task_id)
            ).first()
        return None if row is None else _record(row)

    def list(self, limit: int = 100) -> builtins.list[TaskRecord]:
        """Return the newest ``limit`` tasks, newest first."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(ingest_tasks).order_by(ingest_tasks.c.pk.desc()).limit(limit)
            ).all()
        return [_record(row) for row in rows]

    def files(self, task_id: int, limit: int | None = None) -> builtins.list[TaskFile]:
        """Return the files the task did not index, in the order it met them."""
        statement = (
            select(ingest_task_files)
            .where(ingest_task_files.c.task_pk == task_id)
            .order_by(ingest_task_files.c.pk)
        )
        if limit is not None:
            statement = statement.limit(limit)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [TaskFile(row.path, row.outcome, row.reason) for row in rows]

    def count_files(self, task_id: int) -> int:
        """Return how many files the task did not index."""
        with self.engine.connect() as connection:
            return int(
                connection.execute(
                    select(func.count()).where(ingest_task_files.c.task_pk == task_id)
                ).scalar_one()
            )

    def mark_interrupted(self) -> int:
        """Mark active tasks of dead processes on this host as interrupted; return how many.

        A task whose process ended without finishing it (killed, or the
        machine stopped) would otherwise stay running forever. Resumable
        tasks are left to the server processes, which resume them.
        """
        host = socket.gethostname()
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(ingest_tasks.c.pk, ingest_tasks.c.owner).where(
                    ingest_tasks.c.status.in_(ACTIVE_STATUSES),
                    ingest_tasks.c.resumable.is_(False),
                )
            ).all()
        dead = [row.pk for row in rows if _owner_is_dead(row.owner, host)]
        if dead:
            with self._write() as connection:
                connection.execute(
                    update(ingest_tasks)
                    .where(ingest_tasks.c.pk.in_(dead))
                    .values(
                        status="interrupted",
                        finished_at=_now(),
                        message="The process running the task ended before the task finished",
                    )
                )
            LOGGER.warning("Marked indexing tasks %s as interrupted", dead)
        return len(dead)

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        with (
            self.engine.connect().execution_options(write=True) as connection,
            connection.begin(),
        ):
            yield connection


def _owner_is_dead(owner: str, host: str) -> bool:
    owner_host, _, pid_text = owner.rpartition(":")
    if owner_host != host or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _counts(counts: TaskCounts) -> dict[str, int]:
    return {f"files_{name}": value for name, value in dataclasses.asdict(counts).items()}


def _record(row: object) -> TaskRecord:
    values = row._mapping  # type: ignore[attr-defined]
    counts = TaskCounts(
        **{
            field.name: int(values[f"files_{field.name}"])
            for field in dataclasses.fields(TaskCounts)
        }
    )
    return TaskRecord(
        id=int(values["pk"]),
        kind=values["kind"],
        path=values["path"],
        mode=values["mode"],
        prune=bool(values["prune"]),
        status=values["status"],
        cancel_requested=bool(values["cancel_requested"]),
        counts=counts,
        message=values["message"],
        owner=values["owner"],
        created_at=_aware(values["created_at"]),
        started_at=_aware(values["started_at"]) if values["started_at"] else None,
        finished_at=_aware(values["finished_at"]) if values["finished_at"] else None,
        resumable=bool(values["resumable"]),
        listing_done=bool(values["listing_done"]),
    )


def _aware(moment: datetime.datetime) -> datetime.datetime:
    # SQLite returns naive datetimes; the index stores UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
