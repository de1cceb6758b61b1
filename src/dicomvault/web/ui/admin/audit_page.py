"""Console page of the audit trail: the newest audit events, with filters and a CSV export."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import HTMLResponse
from sqlalchemy.exc import SQLAlchemyError

from dicomvault.audit import AuditFilter, AuditTrail
from dicomvault.web.ui.admin.common import ADMIN_PREFIX, render_panel
from dicomvault.web.ui.rendering import AdminSession

router = APIRouter(prefix=ADMIN_PREFIX, include_in_schema=False)

LOGGER = logging.getLogger(__name__)
SHOWN_EVENTS = 200


@router.get("/audit")
def audit_page(
    request: Request,
    session: AdminSession,
    actor: Annotated[str, Query()] = "",
    failures: Annotated[bool, Query()] = False,
) -> HTMLResponse:
    """Show the newest audit events, optionally of one actor or failures only."""
    trail: AuditTrail = request.app.state.audit
    selection = AuditFilter(actor=actor.strip(), failures_only=failures)
    error_status = None
    try:
        events = trail.read(selection, SHOWN_EVENTS)
        error = ""
    except SQLAlchemyError:
        LOGGER.error("Reading the audit trail failed", exc_info=True)
        events = []
        error = "The index database failed; try again"
        error_status = status.HTTP_503_SERVICE_UNAVAILABLE
    context = {"events": events, "actor": actor, "failures": failures, "error": error}
    return render_panel(
        request, "admin/audit.html", "admin/audit_list.html", session, context, error_status
    )
