"""Authentication of the admin API: a Bearer API token or a console session cookie.

A request authenticates with ``Authorization: Bearer <token>`` (scripts) or
with the session cookie set by ``POST /api/login`` (the console). A request
that changes state with a session cookie must also send the session's CSRF
token in the ``X-CSRF-Token`` header, so that another site cannot make a
logged-in browser send it. Bearer requests need no CSRF token, because a
browser never adds the header by itself.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Response, status

from dicomvault.index.users import Session, UserStore
from dicomvault.users import User

LOGGER = logging.getLogger(__name__)

SESSION_COOKIE = "dicomvault_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def user_store(request: Request) -> UserStore:
    """Return the application's user store."""
    store: UserStore = request.app.state.users
    return store


def set_session_cookie(response: Response, request: Request, session_id: str) -> None:
    """Set the session cookie of a new login on ``response``.

    The cookie is HttpOnly (scripts cannot read it), SameSite=Strict (other
    sites cannot make the browser send it) and Secure when the request came
    over HTTPS. It lasts as long as the store keeps sessions.
    """
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=int(user_store(request).session_lifetime.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def bearer_token(request: Request) -> str | None:
    """Return the token of an ``Authorization: Bearer`` header, or None."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def current_session(request: Request) -> Session | None:
    """Return the live session of the request's cookie, or None."""
    session_id = request.cookies.get(SESSION_COOKIE)
    if not session_id:
        return None
    return user_store(request).get_session(session_id)


def _unauthorized(request: Request, message: str) -> HTTPException:
    LOGGER.info(
        "Rejected %s %s from %s: %s",
        request.method,
        request.url.path,
        request.client.host if request.client else "unknown",
        message,
    )
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"}
    )


def current_user(request: Request) -> User:
    """Return the authenticated caller (a FastAPI dependency).

    Raises
    ------
    HTTPException
        401 without valid credentials; 403 for a state-changing request
        with a session cookie and no matching CSRF token.
    """
    token = bearer_token(request)
    if token is not None:
        user = user_store(request).user_of_token(token)
        if user is None:
            raise _unauthorized(request, "Invalid or revoked API token")
        return user
    session = current_session(request)
    if session is None:
        raise _unauthorized(
            request, "Login required: log in at /api/login or send an API token as Bearer"
        )
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if sent != session.csrf_token:
            LOGGER.warning(
                "Rejected %s %s of user %s: missing or wrong CSRF token",
                request.method,
                request.url.path,
                session.user.name,
            )
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"Missing or wrong {CSRF_HEADER} header; send the csrf_token of the login response",
            )
    return session.user


CurrentUser = Annotated[User, Depends(current_user)]


def require_admin(user: CurrentUser) -> User:
    """Return the caller if they have the admin role (a FastAPI dependency).

    Raises
    ------
    HTTPException
        403 for a caller with the user role.
    """
    if not user.is_admin:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"User {user.name} lacks the admin role this action needs"
        )
    return user


AdminUser = Annotated[User, Depends(require_admin)]
Users = Annotated[UserStore, Depends(user_store)]
