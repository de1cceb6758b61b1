"""Console page of indexing tasks: start one, watch its progress live, cancel it."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request, status
from fastapi.responses import HTMLResponse

from dicomvault.index.tasks import TaskNotFoundError
from dicomvault.index.users import Session
from dicomvault.ingest.jobs import Mode
from dicomvault.ingest.manager import TaskFinishedError, TaskManager
from dicomvault.ingest.roots import PathNotAllowedError
from dicomvault.web.ui.admin.common import ADMIN_PREFIX, render_panel
from dicomvault.web.ui.rendering import AdminSession, render_page

LOGGER = logging.getLogger(__name__)

router = APIRouter(prefix=ADMIN_PREFIX, include_in_schema=False)

PAGE = "admin/tasks.html"
PANEL = "admin/tasks_panel.html"
LISTED_TASKS = 50
ACTIVE_STATUSES = frozenset({"queued", "running"})
EMPTY_FORM = {"path": "", "mode": "in_place", "prune": False}


def _context(request: Request, **extra: Any) -> dict[str, Any]:
    manager: TaskManager = request.app.state.manager
    records = manager.context.tasks.list(LISTED_TASKS)
    return {
        "tasks": records,
        # The list polls for progress only while a task may still change.
        "polling": any(record.status in ACTIVE_STATUSES for record in records),
        "active_statuses": ACTIVE_STATUSES,
        "import_roots": [str(root) for root in manager.context.settings.import_roots],
        "import_buckets": manager.context.settings.ingest.import_buckets,
        "form": EMPTY_FORM,
        "message": "",
        "error": "",
        **extra,
    }


def _render(
    request: Request, session: Session, error_status: int | None = None, **extra: Any
) -> HTMLResponse:
    context = _context(request, **extra)
    return render_panel(request, PAGE, PANEL, session, context, error_status)


@router.get("/tasks")
def tasks_page(request: Request, session: AdminSession) -> HTMLResponse:
    """Show the newest indexing tasks with their progress, and the start form."""
    return _render(request, session)


@router.get("/tasks/list")
def tasks_list(request: Request, session: AdminSession) -> HTMLResponse:
    """Return the task list alone; htmx polls it while a task is queued or running."""
    return render_page(request, "admin/tasks_list.html", session, _context(request))


@router.post("/tasks")
def start_task(
    request: Request,
    session: AdminSession,
    path: Annotated[str, Form()],
    mode: Annotated[str, Form()] = "in_place",
    prune: Annotated[bool, Form()] = False,
) -> HTMLResponse:
    """Queue an indexing task for the folder of the form."""
    form = {"path": path, "mode": mode, "prune": prune}
    try:
        task_mode = Mode(mode)
    except ValueError:
        return _render(
            request,
            session,
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            form=form,
            error=f"Invalid mode {mode!r}: choose in_place or import",
        )
    manager: TaskManager = request.app.state.manager
    try:
        record = manager.submit(path, task_mode, prune)
    except PathNotAllowedError as exc:
        code = status.HTTP_400_BAD_REQUEST if exc.not_a_folder else status.HTTP_403_FORBIDDEN
        return _render(request, session, code, form=form, error=str(exc))
    LOGGER.info("User %s started indexing task %d for %s", session.user.name, record.id, path)
    return _render(request, session, message=f"Task {record.id} queued for {record.path}.")


@router.post("/tasks/{task_id}/cancel")
def cancel_task(task_id: int, request: Request, session: AdminSession) -> HTMLResponse:
    """Ask a queued or running task to stop; show the list again."""
    manager: TaskManager = request.app.state.manager
    try:
        manager.cancel(task_id)
    except TaskNotFoundError:
        return _render(
            request, session, status.HTTP_404_NOT_FOUND, error=f"No indexing task has id {task_id}"
        )
    except TaskFinishedError as exc:
        return _render(request, session, status.HTTP_409_CONFLICT, error=str(exc))
    LOGGER.info("User %s cancelled indexing task %d", session.user.name, task_id)
    return _render(request, session, message=f"Cancellation of task {task_id} requested.")
