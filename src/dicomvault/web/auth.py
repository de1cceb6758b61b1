"""Authentication hook of the DICOMweb routes: who is calling, and may they.

Every DICOMweb route depends on :func:`require_dicomweb_access`, which calls
the :class:`Authenticator` in ``app.state.authenticator`` to identify the caller.
The default :class:`OpenAccess` lets every request through, which is safe only
while the HTTP server listens on a loopback address (the default 127.0.0.1).
With ``http.dicomweb_access = "users"`` the application uses
:class:`UserAuthenticator`, which accepts API tokens and console sessions.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Protocol

from fastapi import HTTPException, Request, status
from starlette.concurrency import run_in_threadpool

from dicomvault.web.identity import current_user

LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Principal:
    """The caller of a request as an authenticator identified it."""

    name: str


ANONYMOUS = Principal("anonymous")


class Authenticator(Protocol):
    """Decides who sends a request; returns None to reject it with 401."""

    def authenticate(self, request: Request) -> Principal | None:
        """Return the caller of ``request``, or None when it is not authenticated."""
        ...


class OpenAccess:
    """Accepts every request as the anonymous caller."""

    def authenticate(self, request: Request) -> Principal | None:
        """Return the anonymous principal for any request."""
        return ANONYMOUS


class UserAuthenticator:
    """Accepts the archive's users: an API token (Bearer) or a console session.

    A state-changing request (STOW-RS) with a session cookie must carry the
    session's CSRF token, as the admin API requires; it gets 403 without.
    """

    def authenticate(self, request: Request) -> Principal | None:
        """Return the user of the request's token or session, or None."""
        try:
            user = current_user(request)
        except HTTPException as exc:
            if exc.status_code == status.HTTP_401_UNAUTHORIZED:
                return None
            raise
        return Principal(user.name)


async def require_dicomweb_access(request: Request) -> Principal:
    """Authenticate a DICOMweb request (a FastAPI dependency of every DICOMweb route).

    :class:`OpenAccess` is answered on the event loop. Other authenticators
    may read the database, so they run in a worker thread.

    Notes
    -----
    - 401: the authenticator rejected the request; the response carries a
      ``WWW-Authenticate: Bearer`` challenge.
    """
    authenticator: Authenticator = getattr(request.app.state, "authenticator", None) or OpenAccess()
    if isinstance(authenticator, OpenAccess):
        principal: Principal | None = ANONYMOUS
    else:
        principal = await run_in_threadpool(authenticator.authenticate, request)
    if principal is None:
        LOGGER.info(
            "Rejected unauthenticated %s %s from %s",
            request.method,
            request.url.path,
            request.client.host if request.client else "unknown",
        )
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "Authentication required: send an API token as 'Authorization: Bearer TOKEN', "
            "or log in to the console",
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.principal = principal
    return principal


def request_principal(request: Request) -> Principal:
    """Return the caller that :func:`require_dicomweb_access` identified for ``request``."""
    principal = getattr(request.state, "principal", None)
    return principal if isinstance(principal, Principal) else ANONYMOUS
