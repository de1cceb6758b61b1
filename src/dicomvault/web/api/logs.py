"""REST API of recent log events kept in memory by the server (admin)."""

from __future__ import annotations

import datetime
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel

from dicomvault.recent_logs import RecentLogHandler
from dicomvault.web.identity import AdminUser

router = APIRouter(prefix="/api/logs", tags=["logs"])

LevelName = Literal["INFO", "WARNING", "ERROR", "CRITICAL"]


class LogEntry(BaseModel):
    """One log record."""

    time: datetime.datetime
    level: str
    logger: str
    message: str


@router.get("", response_model=list[LogEntry])
def recent_logs(
    request: Request,
    admin: AdminUser,
    level: Annotated[LevelName, Query(description="Lowest level returned.")] = "INFO",
    limit: Annotated[int, Query(ge=1, le=100_000)] = 200,
) -> list[LogEntry]:
    """Return the newest log records at ``level`` or above, newest first.

    The server keeps the last ``logging.recent_events`` records at INFO and
    above in memory, so the list starts empty after each start.

    Notes
    -----
    - 503: this server keeps no log records (``logging.recent_events`` is 0,
      or the application runs outside ``dicomvault serve``).
    """
    # This is the operational log; the audit trail is at /api/audit.
    handler: RecentLogHandler | None = request.app.state.recent_logs
    if handler is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "This server keeps no recent log records; set logging.recent_events above 0",
        )
    events = handler.events(logging.getLevelNamesMapping()[level], limit)
    return [
        LogEntry(time=event.time, level=event.level, logger=event.logger, message=event.message)
        for event in events
    ]
