"""Console page of users and API tokens: create and remove users, create and revoke tokens."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request, status
from fastapi.responses import HTMLResponse

from dicomvault.audit import AuditAction, AuditEventType
from dicomvault.index.users import (
    Session,
    TokenNotFoundError,
    UserExistsError,
    UserNotFoundError,
    UserStore,
)
from dicomvault.users import InvalidUserError, check_user_name, parse_role
from dicomvault.web.audit_events import publish_audit
from dicomvault.web.ui.admin.common import ADMIN_PREFIX, render_panel
from dicomvault.web.ui.rendering import AdminSession

LOGGER = logging.getLogger(__name__)
SECURITY_ALERT = AuditEventType.SECURITY_ALERT

router = APIRouter(prefix=ADMIN_PREFIX, include_in_schema=False)

PAGE = "admin/users.html"
PANEL = "admin/users_panel.html"
MAX_TOKEN_NAME = 100


def _store(request: Request) -> UserStore:
    store: UserStore = request.app.state.users
    return store


def _render(
    request: Request, session: Session, error_status: int | None = None, **extra: Any
) -> HTMLResponse:
    store = _store(request)
    context = {
        "users": store.list_users(),
        "tokens": store.list_tokens(session.user),
        "user_form": {"name": "", "role": "user"},
        "new_token": None,
        "message": "",
        "error": "",
        **extra,
    }
    return render_panel(request, PAGE, PANEL, session, context, error_status)


@router.get("/users")
def users_page(request: Request, session: AdminSession) -> HTMLResponse:
    """Show the users, the admin's own API tokens, and the forms that create them."""
    return _render(request, session)


@router.post("/users")
def add_user(
    request: Request,
    session: AdminSession,
    name: Annotated[str, Form()],
    password: Annotated[str, Form()],
    role: Annotated[str, Form()] = "user",
) -> HTMLResponse:
    """Create the user of the form; the password is never shown again."""
    form = {"name": name, "role": role}
    try:
        check_user_name(name)
        user = _store(request).add(name, parse_role(role), password)
    except InvalidUserError as exc:
        return _render(
            request, session, status.HTTP_422_UNPROCESSABLE_CONTENT, user_form=form, error=str(exc)
        )
    except UserExistsError:
        return _render(
            request,
            session,
            status.HTTP_409_CONFLICT,
            user_form=form,
            error=f"A user named {name!r} exists",
        )
    LOGGER.info("User %s created user %s with role %s", session.user.name, user.name, role)
    description = f"Added user {user.name} with role {user.role.value}"
    publish_audit(request, SECURITY_ALERT, AuditAction.CREATE, session.user.name, description)
    return _render(request, session, message=f"Created user {user.name} ({user.role.value}).")


@router.post("/users/{name}/remove")
def remove_user(name: str, request: Request, session: AdminSession) -> HTMLResponse:
    """Remove a user with their tokens and sessions; an admin cannot remove themselves."""
    if name == session.user.name:
        return _render(
            request, session, status.HTTP_409_CONFLICT, error="You cannot remove yourself"
        )
    try:
        _store(request).remove(name)
    except UserNotFoundError:
        return _render(request, session, status.HTTP_404_NOT_FOUND, error=f"No user named {name!r}")
    LOGGER.info("User %s removed user %s", session.user.name, name)
    description = f"Removed user {name}"
    publish_audit(request, SECURITY_ALERT, AuditAction.DELETE, session.user.name, description)
    return _render(request, session, message=f"Removed user {name}.")


@router.post("/tokens")
def create_token(
    request: Request, session: AdminSession, name: Annotated[str, Form()]
) -> HTMLResponse:
    """Create an API token for the logged-in admin and show it this once."""
    label = name.strip()
    if not label or len(label) > MAX_TOKEN_NAME:
        return _render(
            request,
            session,
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            error=f"A token name must be 1 to {MAX_TOKEN_NAME} characters, got {len(label)}",
        )
    info, token = _store(request).create_token(session.user, label)
    description = f"Created API token {info.prefix}"
    publish_audit(request, SECURITY_ALERT, AuditAction.CREATE, session.user.name, description)
    return _render(request, session, new_token={"name": info.name, "token": token})


@router.post("/tokens/{token_id}/revoke")
def revoke_token(token_id: int, request: Request, session: AdminSession) -> HTMLResponse:
    """Revoke one of the logged-in admin's API tokens."""
    try:
        _store(request).revoke_token(session.user, token_id)
    except TokenNotFoundError:
        return _render(
            request,
            session,
            status.HTTP_404_NOT_FOUND,
            error=f"You have no API token with id {token_id}",
        )
    description = f"Revoked API token {token_id}"
    publish_audit(request, SECURITY_ALERT, AuditAction.DELETE, session.user.name, description)
    return _render(request, session, message=f"Revoked token {token_id}.")
