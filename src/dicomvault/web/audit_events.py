"""Publish audit events of HTTP requests: the actor, the client address, the outcome."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Request

from dicomvault.audit import ActorKind, AuditAction, AuditEvent, AuditEventType, AuditOutcome


def client_address(request: Request) -> str:
    """Return the address of the client of ``request``, or '' when unknown."""
    return request.client.host if request.client else ""


def publish_audit(
    request: Request,
    event_type: AuditEventType,
    action: AuditAction,
    actor: str,
    description: str,
    outcome: AuditOutcome = AuditOutcome.SUCCESS,
    study_uids: tuple[str, ...] = (),
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Publish an audit event of a user's request on the archive's event bus."""
    request.app.state.archive.events.publish(
        AuditEvent(
            event_type,
            action,
            outcome,
            actor=actor,
            actor_kind=ActorKind.USER,
            description=description,
            source=client_address(request),
            study_uids=study_uids,
            detail=detail or {},
        )
    )


def audit_login(request: Request, name: str, description: str, failed: bool) -> None:
    """Publish a login attempt (User Authentication, subtype Login) by the user ``name``."""
    publish_audit(
        request,
        AuditEventType.USER_AUTHENTICATION,
        AuditAction.EXECUTE,
        name,
        description,
        outcome=AuditOutcome.MINOR_FAILURE if failed else AuditOutcome.SUCCESS,
        detail={"subtype": "110122 Login"},
    )


def audit_logout(request: Request, name: str) -> None:
    """Publish the end of a console session (User Authentication, subtype Logout)."""
    publish_audit(
        request,
        AuditEventType.USER_AUTHENTICATION,
        AuditAction.EXECUTE,
        name,
        "Logged out",
        detail={"subtype": "110123 Logout"},
    )
