"""Render console pages with Jinja2 and check the login and CSRF token of each request.

How to add a console page:

1. Write a template in ``web/ui/templates/`` that starts with
   ``{% extends "base.html" %}`` and fills ``{% block title %}`` and
   ``{% block content %}``. Admin pages go in ``templates/admin/``.
2. Write the route in a module of ``web/ui/`` with an ``APIRouter`` and
   ``include_in_schema=False``. Take the logged-in session with the
   dependency :data:`ConsoleSession` (any user) or :data:`AdminSession`
   (admin role), and return ``render_page(request, "name.html", session,
   {...})``. A visitor without a session is redirected to the login page,
   and a user without the admin role gets a 403 page.
3. Add the router to ``CONSOLE_ROUTERS`` in ``web/ui/__init__.py`` and, for
   a page reached from the navigation bar, a link to ``web/ui/navigation.py``.

Forms that change something use ``method="post"`` and carry the CSRF token
as ``<input type="hidden" name="csrf_token" value="{{ csrf_token }}">``.
htmx requests send it in the ``X-CSRF-Token`` header, which ``base.html``
sets with ``hx-headers`` on ``<body>``. Both dependencies reject a POST,
PUT, PATCH or DELETE without the token with 403.

Pages are sent with a Content-Security-Policy that allows scripts, styles
and images from this server only. Put JavaScript in ``static/`` files, not
in inline ``<script>`` blocks or ``on*=`` attributes, and use no htmx
``hx-on`` or ``js:`` values (htmx eval is turned off).
"""

from __future__ import annotations

import logging
import secrets
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import Depends, FastAPI, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from dicomvault import __version__
from dicomvault.index.users import Session
from dicomvault.web.identity import CSRF_HEADER, SAFE_METHODS, current_session
from dicomvault.web.ui.formatting import FILTERS
from dicomvault.web.ui.navigation import ADMIN_LINKS, MAIN_LINKS

LOGGER = logging.getLogger(__name__)

CONSOLE_PREFIX = "/console"
LOGIN_PATH = f"{CONSOLE_PREFIX}/login"
STATIC_PREFIX = f"{CONSOLE_PREFIX}/static"
STATIC_DIR = Path(__file__).parent / "static"
TEMPLATES_DIR = Path(__file__).parent / "templates"
CSRF_FIELD = "csrf_token"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


class LoginRequired(Exception):
    """A console page was requested without a live session; the handler redirects to login."""

    def __init__(self, next_url: str) -> None:
        super().__init__(f"login required for {next_url}")
        self.next_url = next_url


class ConsoleForbidden(Exception):
    """A console request was rejected: a missing CSRF token or a missing admin role."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def static_url(name: str) -> str:
    """Return the URL of a file under ``web/ui/static``, with the version against stale caches."""
    return f"{STATIC_PREFIX}/{name}?v={__version__}"


TEMPLATES.globals["static_url"] = static_url
TEMPLATES.globals["version"] = __version__
TEMPLATES.filters.update(FILTERS)


def safe_next_url(value: str | None) -> str:
    """Return ``value`` if it is a console path on this server, else the console's start page.

    Only paths under /console are followed after a login, so a link to the
    login page cannot send the user to another site.
    """
    if not value:
        return CONSOLE_PREFIX
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme or parsed.netloc or value.startswith("//") or "\\" in value:
        return CONSOLE_PREFIX
    if parsed.path != CONSOLE_PREFIX and not parsed.path.startswith(CONSOLE_PREFIX + "/"):
        return CONSOLE_PREFIX
    return value


def render_page(
    request: Request,
    template: str,
    session: Session | None,
    context: Mapping[str, Any] | None = None,
    status_code: int = status.HTTP_200_OK,
) -> HTMLResponse:
    """Render ``template`` as an HTML response for the user of ``session``.

    Every template gets ``request``, ``user`` (None when logged out),
    ``csrf_token`` (empty when logged out), ``nav_links``, ``admin_links``
    (empty for a user without the admin role), ``current_path`` and
    ``static_url()``, besides the entries of ``context``.
    """
    user = session.user if session is not None else None
    values: dict[str, Any] = {
        "request": request,
        "user": user,
        "csrf_token": session.csrf_token if session is not None else "",
        "nav_links": MAIN_LINKS if user is not None else (),
        "admin_links": ADMIN_LINKS if user is not None and user.is_admin else (),
        "current_path": request.url.path,
    }
    values.update(context or {})
    body = TEMPLATES.get_template(template).render(values)
    return HTMLResponse(body, status_code=status_code, headers=SECURITY_HEADERS)


def _request_target(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


async def _check_csrf(request: Request, session: Session) -> None:
    if request.method in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()
        field = form.get(CSRF_FIELD)
        sent = field if isinstance(field, str) else ""
    if not secrets.compare_digest(sent.encode(), session.csrf_token.encode()):
        LOGGER.warning(
            "Rejected %s %s of user %s: missing or wrong CSRF token",
            request.method,
            request.url.path,
            session.user.name,
        )
        raise ConsoleForbidden(
            "The form was sent without its security token, or from an old page. "
            "Reload the page and try again."
        )


async def console_session(request: Request) -> Session:
    """Return the live session of a console request (a FastAPI dependency).

    Raises
    ------
    LoginRequired
        Without a live session cookie; the visitor is sent to the login page.
    ConsoleForbidden
        For a state-changing request without the session's CSRF token, as
        the form field ``csrf_token`` or the ``X-CSRF-Token`` header.
    """
    session = current_session(request)
    if session is None:
        raise LoginRequired(_request_target(request))
    await _check_csrf(request, session)
    return session


ConsoleSession = Annotated[Session, Depends(console_session)]


def admin_session(session: ConsoleSession) -> Session:
    """Return the console session if its user has the admin role (a FastAPI dependency).

    Raises
    ------
    ConsoleForbidden
        For a user with the user role.
    """
    if not session.user.is_admin:
        raise ConsoleForbidden(f"User {session.user.name} lacks the admin role this page needs.")
    return session


AdminSession = Annotated[Session, Depends(admin_session)]


def _redirect_to_login(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    target = LOGIN_PATH
    if exc.next_url and exc.next_url != CONSOLE_PREFIX:
        target += "?" + urllib.parse.urlencode({"next": exc.next_url})
    if request.headers.get("HX-Request") == "true":
        # htmx follows HX-Redirect with a full page load instead of swapping a fragment.
        return Response(status_code=status.HTTP_401_UNAUTHORIZED, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER)


def _forbidden_page(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ConsoleForbidden)
    session = current_session(request)
    return render_page(
        request,
        "error.html",
        session,
        {"title": "Not allowed", "message": exc.message},
        status_code=status.HTTP_403_FORBIDDEN,
    )


def is_console_page(request: Request) -> bool:
    """Return whether ``request`` is for a console page, not an image or static file."""
    path = request.url.path
    inside = path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")
    return inside and not path.startswith((STATIC_PREFIX, f"{CONSOLE_PREFIX}/images/"))


async def _error_page(request: Request, exc: Exception) -> Response:
    """Show an HTTP error of a console page as a page; elsewhere keep FastAPI's JSON."""
    assert isinstance(exc, StarletteHTTPException)
    if not is_console_page(request):
        return await http_exception_handler(request, exc)
    titles = {400: "Invalid request", 404: "Not found", 405: "Not allowed"}
    return render_page(
        request,
        "error.html",
        current_session(request),
        {"title": titles.get(exc.status_code, "Error"), "message": str(exc.detail)},
        status_code=exc.status_code,
    )


def install_console_handlers(app: FastAPI) -> None:
    """Install the handlers that turn LoginRequired, ConsoleForbidden and HTTP errors into pages.

    HTTP errors outside the console pages keep FastAPI's JSON body.
    """
    app.add_exception_handler(LoginRequired, _redirect_to_login)
    app.add_exception_handler(ConsoleForbidden, _forbidden_page)
    app.add_exception_handler(StarletteHTTPException, _error_page)
