"""Console login and logout, and the set-up page shown while no admin user exists."""

from __future__ import annotations

import datetime
import logging
import math
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, status
from fastapi.responses import RedirectResponse, Response

from dicomvault.index.users import LoginLockedError
from dicomvault.users import MAX_PASSWORD_LENGTH
from dicomvault.web.audit_events import audit_login, audit_logout
from dicomvault.web.identity import SESSION_COOKIE, current_session, set_session_cookie, user_store
from dicomvault.web.oidc import oidc_login
from dicomvault.web.ui.oidc_login import login_options
from dicomvault.web.ui.rendering import (
    CONSOLE_PREFIX,
    LOGIN_PATH,
    ConsoleSession,
    render_page,
    safe_next_url,
)

LOGGER = logging.getLogger(__name__)

router = APIRouter(prefix=CONSOLE_PREFIX, include_in_schema=False)

MAX_NAME_LENGTH = 64


def _setup_page(request: Request) -> Response:
    """Return the page that explains how to create the first admin, instead of the login form."""
    return render_page(request, "setup.html", None, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


def _needs_setup(request: Request) -> bool:
    """Return whether nobody could log in as an admin: no admin user and no single sign-on."""
    return oidc_login(request) is None and user_store(request).count_admins() == 0


@router.get("")
def start_page(session: ConsoleSession) -> RedirectResponse:
    """Send a logged-in user to the search page."""
    return RedirectResponse(f"{CONSOLE_PREFIX}/search", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/login")
def login_form(
    request: Request,
    next_url: Annotated[str, Query(alias="next")] = "",
    logged_out: bool = False,
    provider: bool = False,
) -> Response:
    """Show the login form, or the set-up page while no admin user exists.

    A visitor who is logged in already goes on to ``next``, a console path.
    """
    if _needs_setup(request):
        return _setup_page(request)
    if current_session(request) is not None:
        return RedirectResponse(safe_next_url(next_url), status_code=status.HTTP_303_SEE_OTHER)
    return render_page(
        request,
        "login.html",
        None,
        {
            "next": safe_next_url(next_url),
            "name": "",
            "error": "",
            "logged_out": logged_out,
            "provider_logout": provider and logged_out,
            **login_options(request),
        },
    )


@router.post("/login")
def login(
    request: Request,
    name: Annotated[str, Form(max_length=MAX_NAME_LENGTH)],
    password: Annotated[str, Form(max_length=MAX_PASSWORD_LENGTH)],
    next_url: Annotated[str, Form(alias="next")] = "",
) -> Response:
    """Check the name and password; on success start a session and go on to ``next``.

    Notes
    -----
    - 303: logged in; the response sets the session cookie, as POST /api/login does.
    - 401: wrong name or password; the form is shown again with a message.
    - 403: password logins are turned off (``auth.local_login = false``).
    - 429: the user is locked after repeated failures; the message gives the time left.
    - 503: no admin user exists; the set-up page is shown.
    """
    store = user_store(request)
    if _needs_setup(request):
        return _setup_page(request)
    client = request.client.host if request.client else "unknown"
    target = safe_next_url(next_url)
    options = login_options(request)
    if not options["local_login"]:
        LOGGER.warning("Password login of %r from %s rejected: local logins are off", name, client)
        audit_login(request, name, "Login rejected: password logins are turned off", failed=True)
        return render_page(
            request,
            "login.html",
            None,
            {
                "next": target,
                "name": "",
                "error": "Password logins are turned off; use single sign-on.",
                "logged_out": False,
                **options,
            },
            status_code=status.HTTP_403_FORBIDDEN,
        )

    try:
        user = store.authenticate(name, password)
    except LoginLockedError as exc:
        left = exc.until - datetime.datetime.now(datetime.UTC)
        seconds = max(1, math.ceil(left.total_seconds()))
        LOGGER.warning("Console login of locked user %s from %s rejected", name, client)
        audit_login(request, name, "Login rejected: the user is locked out", failed=True)
        response = render_page(
            request,
            "login.html",
            None,
            {
                "next": target,
                "name": name,
                "error": f"Too many failed logins. Try again in {seconds} seconds.",
                "logged_out": False,
                **options,
            },
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
        )
        response.headers["Retry-After"] = str(seconds)
        return response
    if user is None:
        LOGGER.warning("Failed console login of %r from %s", name, client)
        audit_login(request, name, "Login failed: invalid user name or password", failed=True)
        return render_page(
            request,
            "login.html",
            None,
            {
                "next": target,
                "name": name,
                "error": "Invalid user name or password.",
                "logged_out": False,
                **options,
            },
            status_code=status.HTTP_401_UNAUTHORIZED,
        )

    session_id, _ = store.create_session(user)
    redirect = RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER)
    set_session_cookie(redirect, request, session_id)
    LOGGER.info("User %s logged in to the console from %s", user.name, client)
    audit_login(request, user.name, "Logged in", failed=False)
    return redirect


@router.post("/logout")
def logout(request: Request, session: ConsoleSession) -> RedirectResponse:
    """End the session (the form must carry its CSRF token) and show the login page.

    After a single sign-on session, the login page also offers to log out
    at the identity provider. It is a link, not a redirect, because the
    console's Content-Security-Policy (form-action 'self') keeps a form's
    redirect on this server.
    """
    store = user_store(request)
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        store.end_session(session_id)
    target = f"{LOGIN_PATH}?logged_out=true"
    if oidc_login(request) is not None and store.is_external(session.user.name):
        target += "&provider=true"
    response = RedirectResponse(target, status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    LOGGER.info("User %s logged out of the console", session.user.name)
    audit_logout(request, session.user.name)
    return response
