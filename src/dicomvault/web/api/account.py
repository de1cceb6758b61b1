"""REST API of logins, the caller's account and API tokens, and of users (admin)."""

from __future__ import annotations

import datetime
import logging
import math

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, Field

from dicomvault.audit import AuditAction, AuditEventType
from dicomvault.index.users import (
    LoginLockedError,
    TokenInfo,
    TokenNotFoundError,
    UserExistsError,
    UserNotFoundError,
)
from dicomvault.users import InvalidUserError, Role, check_user_name
from dicomvault.web.audit_events import audit_login, audit_logout, publish_audit
from dicomvault.web.identity import (
    SESSION_COOKIE,
    AdminUser,
    CurrentUser,
    Users,
    require_admin,
    set_session_cookie,
    user_store,
)

LOGGER = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["accounts"])


class LoginRequest(BaseModel):
    """A user name and password."""

    name: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class Account(BaseModel):
    """The logged-in user; ``csrf_token`` goes in the X-CSRF-Token header of changes."""

    name: str
    role: str
    csrf_token: str | None = Field(None, description="Only for a console session.")


class TokenRequest(BaseModel):
    """A name that says what a new API token is for."""

    name: str = Field(min_length=1, max_length=100)


class TokenEntry(BaseModel):
    """An API token as listed: its start, never the whole token."""

    id: int
    name: str
    prefix: str
    created_at: datetime.datetime
    last_used_at: datetime.datetime | None


class NewToken(TokenEntry):
    """A new API token: the only time the token itself is shown."""

    token: str


class UserEntry(BaseModel):
    """A user and their role."""

    name: str
    role: Role


class NewUser(BaseModel):
    """A user to create."""

    name: str = Field(max_length=64)
    role: Role = Role.USER
    password: str = Field(max_length=1024)


def _entry(info: TokenInfo) -> TokenEntry:
    return TokenEntry(
        id=info.id,
        name=info.name,
        prefix=info.prefix,
        created_at=info.created_at,
        last_used_at=info.last_used_at,
    )


@router.post("/login", response_model=Account)
def login(body: LoginRequest, request: Request, response: Response, store: Users) -> Account:
    """Check a user name and password and start a console session (a cookie).

    Answers 403 while password logins are turned off (``auth.local_login = false``).
    """
    client = request.client.host if request.client else "unknown"
    if not request.app.state.archive.settings.auth.local_login:
        LOGGER.warning(
            "Password login of %r from %s rejected: local logins are off", body.name, client
        )
        audit_login(request, body.name, "Login rejected: password logins are turned off", True)
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "Password logins are turned off (auth.local_login = false); "
            "log in to the console through single sign-on, or send an API token",
        )
    try:
        user = store.authenticate(body.name, body.password)
    except LoginLockedError as exc:
        left = exc.until - datetime.datetime.now(datetime.UTC)
        seconds = max(1, math.ceil(left.total_seconds()))
        LOGGER.warning("Login of locked user %s from %s rejected", body.name, client)
        audit_login(request, body.name, "Login rejected: the user is locked out", failed=True)
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"Too many failed logins; try again in {seconds} s",
            headers={"Retry-After": str(seconds)},
        ) from None
    if user is None:
        LOGGER.warning("Failed login of %r from %s", body.name, client)
        audit_login(request, body.name, "Login failed: invalid user name or password", True)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Invalid user name or password")
    session_id, session = store.create_session(user)
    set_session_cookie(response, request, session_id)
    LOGGER.info("User %s logged in from %s", user.name, client)
    audit_login(request, user.name, "Logged in", failed=False)
    return Account(name=user.name, role=user.role.value, csrf_token=session.csrf_token)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(request: Request, store: Users) -> Response:
    """End the console session of the request's cookie, if any."""
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        session = store.get_session(session_id)
        store.end_session(session_id)
        if session is not None:
            audit_logout(request, session.user.name)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/me", response_model=Account)
def me(request: Request, user: CurrentUser) -> Account:
    """Return the caller, with the CSRF token of their console session."""
    session_id = request.cookies.get(SESSION_COOKIE)
    session = user_store(request).get_session(session_id) if session_id else None
    csrf = session.csrf_token if session is not None and session.user == user else None
    return Account(name=user.name, role=user.role.value, csrf_token=csrf)


@router.get("/tokens", response_model=list[TokenEntry])
def list_tokens(user: CurrentUser, store: Users) -> list[TokenEntry]:
    """List the caller's API tokens."""
    return [_entry(info) for info in store.list_tokens(user)]


@router.post("/tokens", response_model=NewToken, status_code=status.HTTP_201_CREATED)
def create_token(body: TokenRequest, request: Request, user: CurrentUser, store: Users) -> NewToken:
    """Create an API token for the caller; the response is the only place it appears."""
    info, token = store.create_token(user, body.name)
    _audit_change(request, user.name, AuditAction.CREATE, f"Created API token {info.prefix}")
    return NewToken(token=token, **_entry(info).model_dump())


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(token_id: int, request: Request, user: CurrentUser, store: Users) -> Response:
    """Revoke one of the caller's API tokens."""
    try:
        store.revoke_token(user, token_id)
    except TokenNotFoundError:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"You have no API token with id {token_id}"
        ) from None
    _audit_change(request, user.name, AuditAction.DELETE, f"Revoked API token {token_id}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/users", response_model=list[UserEntry], dependencies=[Depends(require_admin)])
def list_users(store: Users) -> list[UserEntry]:
    """List the users and their roles (admin)."""
    return [UserEntry(name=user.name, role=user.role) for user in store.list_users()]


@router.post(
    "/users",
    response_model=UserEntry,
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(require_admin)],
)
def add_user(body: NewUser, request: Request, admin: AdminUser, store: Users) -> UserEntry:
    """Create a user (admin)."""
    try:
        check_user_name(body.name)
        user = store.add(body.name, body.role, body.password)
    except InvalidUserError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    except UserExistsError:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"A user named {body.name!r} exists"
        ) from None
    description = f"Added user {user.name} with role {user.role.value}"
    _audit_change(request, admin.name, AuditAction.CREATE, description)
    return UserEntry(name=user.name, role=user.role)


@router.delete("/users/{name}", status_code=status.HTTP_204_NO_CONTENT)
def remove_user(name: str, request: Request, admin: AdminUser, store: Users) -> Response:
    """Remove a user with their tokens and sessions (admin); not the caller."""
    if name == admin.name:
        raise HTTPException(status.HTTP_409_CONFLICT, "You cannot remove yourself")
    try:
        store.remove(name)
    except UserNotFoundError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"No user named {name!r}") from None
    _audit_change(request, admin.name, AuditAction.DELETE, f"Removed user {name}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _audit_change(request: Request, actor: str, action: AuditAction, description: str) -> None:
    """Record a change of users or API tokens as a Security Alert (PS3.15 A.5.3.11)."""
    publish_audit(request, AuditEventType.SECURITY_ALERT, action, actor, description)
