"""Console page of the DIMSE service: its state and a form that changes its settings."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request, status
from fastapi.responses import HTMLResponse
from sqlalchemy.exc import SQLAlchemyError

from dicomvault.audit import AuditAction, AuditEventType
from dicomvault.dimse.service import DimseService, ListenError
from dicomvault.index.users import Session
from dicomvault.web.audit_events import publish_audit
from dicomvault.web.ui.admin.common import ADMIN_PREFIX, render_panel
from dicomvault.web.ui.rendering import AdminSession

LOGGER = logging.getLogger(__name__)

router = APIRouter(prefix=ADMIN_PREFIX, include_in_schema=False)

PAGE = "admin/service.html"
PANEL = "admin/service_panel.html"


def _context(request: Request, **extra: Any) -> dict[str, Any]:
    service: DimseService = request.app.state.dimse
    return {"service": service.status(), "form": None, "message": "", "error": "", **extra}


def _render(
    request: Request, session: Session, error_status: int | None = None, **extra: Any
) -> HTMLResponse:
    return render_panel(request, PAGE, PANEL, session, _context(request, **extra), error_status)


@router.get("/service")
def service_page(request: Request, session: AdminSession) -> HTMLResponse:
    """Show the DIMSE service's settings, state and the form that changes them."""
    return _render(request, session)


@router.post("/service")
def change_service(
    request: Request,
    session: AdminSession,
    ae_title: Annotated[str, Form()],
    host: Annotated[str, Form()],
    port: Annotated[str, Form()],
    allowed_calling_ae_titles: Annotated[str, Form()] = "",
    unknown_callers: Annotated[str | None, Form()] = None,
) -> HTMLResponse:
    """Apply and save the settings of the form; show the outcome in the panel.

    The allowed calling AE titles are one text field, separated by commas,
    as in the DICOMVAULT_DIMSE_ALLOWED_CALLING_AE_TITLES variable. A form
    without ``unknown_callers`` leaves that setting unchanged.
    """
    changes = {
        "ae_title": ae_title,
        "host": host,
        "port": port,
        "allowed_calling_ae_titles": allowed_calling_ae_titles,
    }
    if unknown_callers is not None:
        changes["unknown_callers"] = unknown_callers
    service: DimseService = request.app.state.dimse
    # The form shown again after an error keeps what was typed.
    form = {"unknown_callers": service.status().settings.unknown_callers, **changes}
    try:
        service.change(changes, session.user.name)
    except ValueError as exc:
        return _render(
            request, session, status.HTTP_422_UNPROCESSABLE_CONTENT, form=form, error=str(exc)
        )
    except ListenError as exc:
        return _render(request, session, status.HTTP_409_CONFLICT, form=form, error=str(exc))
    except SQLAlchemyError:
        LOGGER.error(
            "Saving the DIMSE settings of user %s failed", session.user.name, exc_info=True
        )
        return _render(
            request,
            session,
            status.HTTP_503_SERVICE_UNAVAILABLE,
            form=form,
            error="The index database failed, so nothing was changed; try again",
        )
    publish_audit(
        request,
        AuditEventType.SECURITY_ALERT,
        AuditAction.UPDATE,
        session.user.name,
        "Changed the DIMSE service settings",
        detail={"changes": changes},
    )
    return _render(request, session, message="Saved; new associations use these settings.")


@router.post("/service/reset")
def reset_service(request: Request, session: AdminSession) -> HTMLResponse:
    """Forget the saved settings and return to the configured ones."""
    service: DimseService = request.app.state.dimse
    try:
        service.reset(session.user.name)
    except ListenError as exc:
        return _render(request, session, status.HTTP_409_CONFLICT, error=str(exc))
    except SQLAlchemyError:
        LOGGER.error("Resetting the DIMSE settings failed", exc_info=True)
        return _render(
            request,
            session,
            status.HTTP_503_SERVICE_UNAVAILABLE,
            error="The index database failed, so nothing was changed; try again",
        )
    publish_audit(
        request,
        AuditEventType.SECURITY_ALERT,
        AuditAction.UPDATE,
        session.user.name,
        "Reset the DIMSE service to the configured settings",
    )
    return _render(request, session, message="The configured settings apply again.")
