"""REST API of indexing tasks: start, list, show with the report, cancel."""

from __future__ import annotations

import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from pydantic import BaseModel, Field

from dicomvault.index.tasks import TaskFile, TaskNotFoundError, TaskRecord
from dicomvault.ingest.jobs import Mode
from dicomvault.ingest.manager import TaskFinishedError, TaskManager
from dicomvault.ingest.roots import PathNotAllowedError

router = APIRouter(prefix="/api/tasks", tags=["indexing tasks"])

MAX_REPORT_FILES = 10_000
# Task ids are 64-bit signed integers in SQLite and PostgreSQL. A larger id in
# a path is rejected with 422, not passed to the index, where it would raise.
MAX_TASK_ID = 2**63 - 1
TaskId = Annotated[int, Path(ge=1, le=MAX_TASK_ID)]


class TaskRequest(BaseModel):
    """A request to index a folder or a bucket prefix."""

    path: str = Field(
        description="Folder to index, under an import root; or s3://bucket/prefix, under "
        "ingest.import_buckets."
    )
    mode: Literal["in_place", "import"] = Field(
        "in_place",
        description="in_place: index the files where they are; import: copy them into storage.",
    )
    prune: bool = Field(
        False, description="Remove index entries of in-place files or bucket objects that are gone."
    )


class TaskProgress(BaseModel):
    """File counts of a task, its rate and the estimated time left."""

    found: int
    indexed: int
    skipped: int = Field(description="Unchanged since an earlier task.")
    failed: int
    ignored: int = Field(description="DICOMDIR files and symbolic links leading outside.")
    pending: int = Field(description="Still being written when last seen.")
    pruned: int
    files_per_second: float
    seconds_left: float | None = Field(description="Estimate; null when unknown.")


class TaskFileEntry(BaseModel):
    """A file the task did not index."""

    path: str
    outcome: str = Field(description="failed, ignored or pending")
    reason: str


class TaskSummary(BaseModel):
    """One indexing task."""

    id: int
    kind: str = Field(description="index: a one-time task; watch: a watched folder.")
    path: str
    mode: str
    prune: bool
    status: str = Field(
        description="queued, running, completed, cancelled, failed, interrupted or stopped"
    )
    cancel_requested: bool
    message: str
    progress: TaskProgress
    created_at: datetime.datetime
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None


class TaskReport(TaskSummary):
    """One indexing task with the files it did not index."""

    files: list[TaskFileEntry]
    files_total: int


def _manager(request: Request) -> TaskManager:
    manager: TaskManager = request.app.state.manager
    return manager


def _summary(record: TaskRecord) -> TaskSummary:
    counts = record.counts
    return TaskSummary(
        id=record.id,
        kind=record.kind,
        path=record.path,
        mode=record.mode,
        prune=record.prune,
        status=record.status,
        cancel_requested=record.cancel_requested,
        message=record.message,
        progress=TaskProgress(
            found=counts.found,
            indexed=counts.indexed,
            skipped=counts.skipped,
            failed=counts.failed,
            ignored=counts.ignored,
            pending=counts.pending,
            pruned=counts.pruned,
            files_per_second=round(record.rate, 1),
            seconds_left=None if record.eta_seconds is None else round(record.eta_seconds, 1),
        ),
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
    )


def _entry(file: TaskFile) -> TaskFileEntry:
    return TaskFileEntry(path=file.path, outcome=file.outcome, reason=file.reason)


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=TaskSummary)
def start_task(body: TaskRequest, request: Request) -> TaskSummary:
    """Queue a task that indexes a folder or a bucket prefix.

    A server sharing the index runs it once it has run the tasks queued
    before it; the chunks of a bucket task are indexed by every server.

    Notes
    -----
    - 202: the task is queued; poll ``GET /api/tasks/{id}`` for progress.
    - 403: the path is not under an import root (after resolving symbolic
      links and '..'), the bucket prefix is not under ``ingest.import_buckets``,
      or none is configured.
    - 400: the path is not an existing folder, or not a valid s3:// URL,
      or pruning was asked for a bucket.
    - 422: the body is not valid.
    """
    try:
        record = _manager(request).submit(body.path, Mode(body.mode), body.prune)
    except PathNotAllowedError as exc:
        code = status.HTTP_400_BAD_REQUEST if exc.not_a_folder else status.HTTP_403_FORBIDDEN
        raise HTTPException(code, str(exc)) from None
    return _summary(record)


@router.get("", response_model=list[TaskSummary])
def list_tasks(
    request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[TaskSummary]:
    """List the newest tasks, newest first, with their progress."""
    return [_summary(record) for record in _manager(request).context.tasks.list(limit)]


@router.get("/{task_id}", response_model=TaskReport)
def get_task(
    task_id: TaskId,
    request: Request,
    limit: Annotated[int, Query(ge=0, le=MAX_REPORT_FILES)] = 1000,
) -> TaskReport:
    """Return one task with the first ``limit`` files it did not index and why.

    Notes
    -----
    - 404: no task has this id.
    """
    tasks = _manager(request).context.tasks
    record = tasks.get(task_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"No indexing task has id {task_id}")
    files = [_entry(file) for file in tasks.files(task_id, limit)]
    return TaskReport(
        **_summary(record).model_dump(), files=files, files_total=tasks.count_files(task_id)
    )


@router.post("/{task_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=TaskSummary)
def cancel_task(task_id: TaskId, request: Request) -> TaskSummary:
    """Ask a queued or running task to stop; it keeps what it has indexed so far.

    Notes
    -----
    - 202: cancellation requested; a running task stops within about a second.
    - 404: no task has this id.
    - 409: the task has already finished.
    """
    try:
        record = _manager(request).cancel(task_id)
    except TaskNotFoundError:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"No indexing task has id {task_id}"
        ) from None
    except TaskFinishedError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return _summary(record)
