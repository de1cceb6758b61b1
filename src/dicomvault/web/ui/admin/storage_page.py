"""Console pages of storage: usage figures, and deleting a study or series with confirmation."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request, status
from fastapi.responses import HTMLResponse
from sqlalchemy.exc import SQLAlchemyError

from dicomvault.archive import Archive, IndexUnavailableError
from dicomvault.audit import AuditAction, AuditEventType
from dicomvault.dicom.attributes import Level
from dicomvault.index.removal import preview_removal
from dicomvault.index.usage import count_usage
from dicomvault.index.users import Session
from dicomvault.web.audit_events import publish_audit
from dicomvault.web.dicomweb.media import is_uid
from dicomvault.web.ui.admin.common import ADMIN_PREFIX, format_bytes
from dicomvault.web.ui.rendering import AdminSession, render_page

LOGGER = logging.getLogger(__name__)

router = APIRouter(prefix=ADMIN_PREFIX, include_in_schema=False)

DB_FAILED = "The index database failed; try again"


def _archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


def _free_space(archive: Archive) -> str:
    free = archive.storage.free_bytes()
    return "unknown" if free is None else format_bytes(free)


@router.get("/storage")
def storage_page(request: Request, session: AdminSession) -> HTMLResponse:
    """Show the counts of the index and the bytes stored, and the delete form."""
    archive = _archive(request)
    try:
        usage = count_usage(archive.engine)
    except SQLAlchemyError:
        LOGGER.error("Counting the index failed", exc_info=True)
        return _error(request, session, status.HTTP_503_SERVICE_UNAVAILABLE, DB_FAILED)
    context = {
        "usage": usage,
        "stored_size": format_bytes(usage.stored_bytes),
        "in_place_size": format_bytes(usage.in_place_bytes),
        "free_space": _free_space(archive),
    }
    return render_page(request, "admin/storage.html", session, context)


def _error(request: Request, session: Session, code: int, message: str) -> HTMLResponse:
    context = {"title": "Cannot delete", "message": message}
    return render_page(request, "admin/delete_error.html", session, context, status_code=code)


def _check_uids(study: str, series: str) -> str:
    """Return an error message for a malformed UID, or an empty string."""
    if not is_uid(study):
        return f"Invalid Study Instance UID {study!r}: use digits separated by dots"
    if series and not is_uid(series):
        return f"Invalid Series Instance UID {series!r}: use digits separated by dots"
    return ""


def _describe(study: str, series: str) -> str:
    return f"series {series} of study {study}" if series else f"study {study}"


@router.get("/delete")
def confirm_deletion(
    request: Request,
    session: AdminSession,
    study: Annotated[str, Query()] = "",
    series: Annotated[str, Query()] = "",
) -> HTMLResponse:
    """Show what deleting the study, or one series of it, removes, and ask to confirm."""
    study, series = study.strip(), series.strip()
    problem = _check_uids(study, series)
    if problem:
        return _error(request, session, status.HTTP_400_BAD_REQUEST, problem)
    try:
        preview = preview_removal(_archive(request).engine, study, series)
    except SQLAlchemyError:
        LOGGER.error("Reading %s for deletion failed", _describe(study, series), exc_info=True)
        return _error(request, session, status.HTTP_503_SERVICE_UNAVAILABLE, DB_FAILED)
    if preview is None:
        return _error(
            request,
            session,
            status.HTTP_404_NOT_FOUND,
            f"No {_describe(study, series)} is indexed",
        )
    context: dict[str, Any] = {"preview": preview, "what": _describe(study, series)}
    return render_page(request, "admin/delete_confirm.html", session, context)


@router.post("/delete")
def delete(
    request: Request,
    session: AdminSession,
    study: Annotated[str, Form()],
    series: Annotated[str, Form()] = "",
) -> HTMLResponse:
    """Delete the confirmed study or series, as DELETE /api/studies/... does."""
    study, series = study.strip(), series.strip()
    problem = _check_uids(study, series)
    if problem:
        return _error(request, session, status.HTTP_400_BAD_REQUEST, problem)
    archive = _archive(request)
    what = _describe(study, series)
    try:
        if series and preview_removal(archive.engine, study, series) is None:
            return _error(request, session, status.HTTP_404_NOT_FOUND, f"No {what} is indexed")
        level, uid = (Level.SERIES, series) if series else (Level.STUDY, study)
        result = archive.remove(level, uid, delete_files=True)
    except (SQLAlchemyError, IndexUnavailableError):
        LOGGER.error("Deleting %s failed", what, exc_info=True)
        return _error(request, session, status.HTTP_503_SERVICE_UNAVAILABLE, DB_FAILED)
    if not result.removed:
        return _error(request, session, status.HTTP_404_NOT_FOUND, f"No {what} is indexed")
    LOGGER.info(
        "User %s deleted %s: %d instances, %d stored files deleted, %d in-place files kept",
        session.user.name,
        what,
        len(result.removed),
        result.deleted_files,
        result.kept_in_place,
    )
    publish_audit(
        request,
        AuditEventType.INSTANCES_ACCESSED,
        AuditAction.DELETE,
        session.user.name,
        f"Deleted {what}: {len(result.removed)} instances",
        study_uids=(study,),
        detail={"deleted_files": result.deleted_files, "kept_in_place": result.kept_in_place},
    )
    context = {"what": what, "result": result}
    return render_page(request, "admin/delete_done.html", session, context)
