"""REST API of the audit trail (admin): recent events as JSON or CSV."""

from __future__ import annotations

import csv
import datetime
import io
import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from dicomvault.audit import AuditFilter, AuditTrail, RecordedEvent

router = APIRouter(prefix="/api/audit", tags=["audit"])

MAX_EVENTS = 10_000
CSV_COLUMNS = (
    "id",
    "occurred_at",
    "event_code",
    "event_name",
    "action",
    "outcome",
    "actor",
    "actor_kind",
    "source",
    "study_uids",
    "description",
    "detail",
)


class AuditEntry(BaseModel):
    """One recorded audit event (DICOM PS3.15 A.5 terms)."""

    id: int
    occurred_at: datetime.datetime
    event_code: str
    event_name: str
    action: str
    outcome: int
    actor: str
    actor_kind: str
    source: str
    study_uids: list[str]
    description: str
    detail: dict[str, Any]


def _selection(
    since: datetime.datetime | None,
    until: datetime.datetime | None,
    actor: str,
    event_code: str,
    study_uid: str,
    failures_only: bool,
) -> AuditFilter:
    return AuditFilter(since, until, actor, event_code, study_uid, failures_only)


def _read(request: Request, selection: AuditFilter, limit: int, offset: int) -> list[RecordedEvent]:
    trail: AuditTrail = request.app.state.audit
    try:
        return trail.read(selection, limit, offset)
    except SQLAlchemyError:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "The index database failed; try again"
        ) from None


SinceQuery = Annotated[
    datetime.datetime | None, Query(description="Events at or after this time (ISO 8601).")
]
UntilQuery = Annotated[
    datetime.datetime | None, Query(description="Events before this time (ISO 8601).")
]
ActorQuery = Annotated[str, Query(description="User name or AE title that acted.")]
CodeQuery = Annotated[str, Query(description="Event type code, such as 110112 (Query).")]
StudyQuery = Annotated[str, Query(description="Study Instance UID the event concerns.")]
FailuresQuery = Annotated[bool, Query(description="Only events whose outcome is a failure.")]
LimitQuery = Annotated[int, Query(ge=1, le=MAX_EVENTS)]
# The index takes OFFSET as a 64-bit signed integer, so a larger value is rejected with
# 422 here instead of failing in the database.
MAX_OFFSET = 2**63 - 1
OffsetQuery = Annotated[int, Query(ge=0, le=MAX_OFFSET)]


@router.get("", response_model=list[AuditEntry])
def list_events(
    request: Request,
    since: SinceQuery = None,
    until: UntilQuery = None,
    actor: ActorQuery = "",
    event_code: CodeQuery = "",
    study_uid: StudyQuery = "",
    failures_only: FailuresQuery = False,
    limit: LimitQuery = 100,
    offset: OffsetQuery = 0,
) -> list[AuditEntry]:
    """List recorded audit events, newest first (admin)."""
    selection = _selection(since, until, actor, event_code, study_uid, failures_only)
    events = _read(request, selection, limit, offset)
    return [AuditEntry(**{**vars(event), "study_uids": list(event.study_uids)}) for event in events]


@router.get("/export.csv", response_class=Response)
def export_events(
    request: Request,
    since: SinceQuery = None,
    until: UntilQuery = None,
    actor: ActorQuery = "",
    event_code: CodeQuery = "",
    study_uid: StudyQuery = "",
    failures_only: FailuresQuery = False,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = MAX_EVENTS,
) -> Response:
    """Export recorded audit events as CSV, newest first (admin)."""
    selection = _selection(since, until, actor, event_code, study_uid, failures_only)
    events = _read(request, selection, limit, 0)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(CSV_COLUMNS)
    for event in events:
        writer.writerow(
            [
                event.id,
                event.occurred_at.isoformat(),
                event.event_code,
                event.event_name,
                event.action,
                event.outcome,
                event.actor,
                event.actor_kind,
                event.source,
                "\\".join(event.study_uids),
                event.description,
                json.dumps(event.detail, sort_keys=True),
            ]
        )
    return Response(
        text.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="audit-events.csv"'},
    )
