"""Console page of recent log events, filtered by level and refreshed while open."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from dicomvault.recent_logs import RecentLogHandler
from dicomvault.web.ui.admin.common import ADMIN_PREFIX, render_panel
from dicomvault.web.ui.rendering import AdminSession

router = APIRouter(prefix=ADMIN_PREFIX, include_in_schema=False)

LEVELS = ("INFO", "WARNING", "ERROR", "CRITICAL")
SHOWN_EVENTS = 200


@router.get("/events")
def events_page(
    request: Request, session: AdminSession, level: Annotated[str, Query()] = "INFO"
) -> HTMLResponse:
    """Show the newest log records at ``level`` or above, newest first.

    The list is refreshed every few seconds. An unknown level shows INFO.
    """
    # These are the server's log records; the audit trail has its own page.
    chosen = level.upper() if level.upper() in LEVELS else "INFO"
    handler: RecentLogHandler | None = request.app.state.recent_logs
    events = (
        handler.events(logging.getLevelNamesMapping()[chosen], SHOWN_EVENTS) if handler else None
    )
    context = {"events": events, "levels": LEVELS, "level": chosen}
    return render_panel(request, "admin/events.html", "admin/events_list.html", session, context)
