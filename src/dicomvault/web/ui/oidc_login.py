"""Console single sign-on: the redirect to the OpenID Connect provider and the callback."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from dicomvault.index.users import LocalUserConflictError
from dicomvault.users import InvalidUserError
from dicomvault.web.audit_events import audit_login
from dicomvault.web.identity import set_session_cookie, user_store
from dicomvault.web.oidc import OidcLogin, OidcLoginError, oidc_login
from dicomvault.web.ui.rendering import CONSOLE_PREFIX, LOGIN_PATH, render_page

LOGGER = logging.getLogger(__name__)

router = APIRouter(prefix=CONSOLE_PREFIX, include_in_schema=False)

CALLBACK_ROUTE = "oidc_callback"
_START_PAGE = f"{CONSOLE_PREFIX}/search"


def _failure_page(request: Request, message: str, status_code: int) -> Response:
    """Return the login page with ``message`` in place of a session."""
    return render_page(
        request,
        "login.html",
        None,
        {
            "next": "",
            "name": "",
            "error": message,
            "logged_out": False,
            **login_options(request),
        },
        status_code=status_code,
    )


def login_options(request: Request) -> dict[str, object]:
    """Return the login page's choices: password form shown, and the provider's name or ''."""
    oidc = oidc_login(request)
    return {
        "local_login": request.app.state.archive.settings.auth.local_login,
        "oidc_name": oidc.display_name if oidc is not None else "",
    }


def _callback_url(request: Request) -> str:
    public_url: str = request.app.state.archive.settings.http.public_url
    if public_url:
        return f"{public_url}{CONSOLE_PREFIX}/login/oidc/callback"
    return str(request.url_for(CALLBACK_ROUTE))


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.get("/login/oidc")
async def start_login(request: Request) -> Response:
    """Redirect to the provider's authorization endpoint.

    Notes
    -----
    - 302: on to the provider, with a new state, nonce and PKCE challenge.
    - 404: single sign-on is off.
    - 503: the provider cannot be reached; the login page shows the error.
    """
    oidc = oidc_login(request)
    if oidc is None:
        return _failure_page(
            request, "Single sign-on is not configured.", status.HTTP_404_NOT_FOUND
        )
    try:
        return await oidc.start(request, _callback_url(request))
    except OidcLoginError as exc:
        return _failure_page(request, str(exc), status.HTTP_503_SERVICE_UNAVAILABLE)


@router.get("/login/oidc/callback", name=CALLBACK_ROUTE)
async def finish_login(request: Request) -> Response:
    """Check the provider's authorization response, map the role and start a console session.

    The response is a page that moves on to the console instead of a
    redirect, because the session cookie is SameSite=Strict and a browser
    does not send it on a redirect chain that began at the provider's site.

    Notes
    -----
    - 200: logged in; the response sets the session cookie, as a password login does.
    - 400: the login failed (provider error, state, code or ID token invalid).
    - 403: the role claim matches no role, or the name is taken by a local user.
    - 404: single sign-on is off.
    - 503: the provider cannot be reached.
    """
    oidc = oidc_login(request)
    if oidc is None:
        return _failure_page(
            request, "Single sign-on is not configured.", status.HTTP_404_NOT_FOUND
        )
    try:
        claims = await oidc.finish(request)
    except OidcLoginError as exc:
        LOGGER.warning("Single sign-on login from %s failed: %s", _client(request), exc)
        audit_login(request, "unknown", f"Single sign-on failed: {exc}", failed=True)
        return _failure_page(request, f"Single sign-on failed: {exc}", status.HTTP_400_BAD_REQUEST)
    return await _start_session(request, oidc, claims)


async def _start_session(request: Request, oidc: OidcLogin, claims: Mapping[str, Any]) -> Response:
    client = _client(request)
    name = oidc.user_name(claims)
    if name is None:
        message = f"The ID token has no '{oidc.auth.oidc_name_claim}' claim to name the user."
        LOGGER.warning("Single sign-on login from %s rejected: %s", client, message)
        audit_login(request, "unknown", f"Single sign-on rejected: {message}", failed=True)
        return _failure_page(request, message, status.HTTP_403_FORBIDDEN)

    role = oidc.map_role(claims)
    if role is None:
        message = (
            f"Your account at the identity provider has no role in this archive: its "
            f"'{oidc.auth.oidc_role_claim}' claim matches no configured value. "
            "Ask an administrator for access."
        )
        LOGGER.warning(
            "Single sign-on login of %s from %s rejected: claim %r matches no role",
            name,
            client,
            oidc.auth.oidc_role_claim,
        )
        audit_login(request, name, "Single sign-on rejected: no role mapped", failed=True)
        return _failure_page(request, message, status.HTTP_403_FORBIDDEN)

    store = user_store(request)
    try:
        user = await run_in_threadpool(store.sync_external, name, role)
    except (InvalidUserError, LocalUserConflictError) as exc:
        if isinstance(exc, LocalUserConflictError):
            reason = f"a local user named {name!r} exists, and single sign-on cannot log in as it"
        else:
            reason = str(exc)
        LOGGER.warning("Single sign-on login from %s rejected: %s", client, reason)
        audit_login(request, name, f"Single sign-on rejected: {reason}", failed=True)
        return _failure_page(
            request, f"Single sign-on rejected: {reason}.", status.HTTP_403_FORBIDDEN
        )

    session_id, _ = await run_in_threadpool(store.create_session, user)
    response = render_page(request, "signed_in.html", None, {"target": _START_PAGE})
    set_session_cookie(response, request, session_id)
    LOGGER.info(
        "User %s logged in to the console through single sign-on from %s as %s",
        user.name,
        client,
        user.role.value,
    )
    audit_login(request, user.name, "Logged in through single sign-on", failed=False)
    return response


@router.get("/login/oidc/logout")
async def provider_logout(request: Request) -> Response:
    """Redirect to the provider's end-session endpoint, or to the login page if it has none.

    The console session has ended already (POST /console/logout). This link
    ends the session at the provider too, so that the next single sign-on
    asks for the user's credentials again.
    """
    oidc = oidc_login(request)
    base = request.app.state.archive.settings.http.public_url or str(request.base_url)
    back = f"{base.rstrip('/')}{LOGIN_PATH}?logged_out=true"
    url = await oidc.end_session_url(back) if oidc is not None else None
    return RedirectResponse(url or LOGIN_PATH, status_code=status.HTTP_303_SEE_OTHER)
