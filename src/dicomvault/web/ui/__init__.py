"""The browser console: server-rendered pages under /console, with htmx for live parts.

:func:`include_console` mounts the pages, their static files and the
redirect from ``/`` on the application. :mod:`dicomvault.web.ui.rendering`
explains how to add a page.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from dicomvault.web.ui import browse, images, instance_page, login, oidc_login, search_page
from dicomvault.web.ui.admin import ADMIN_ROUTERS
from dicomvault.web.ui.rendering import (
    CONSOLE_PREFIX,
    STATIC_DIR,
    STATIC_PREFIX,
    install_console_handlers,
)

# Routers of the console pages, each with paths under /console.
CONSOLE_ROUTERS: tuple[APIRouter, ...] = (
    login.router,
    oidc_login.router,
    search_page.router,
    browse.router,
    instance_page.router,
    images.router,
    *ADMIN_ROUTERS,
)


def _start_page() -> RedirectResponse:
    return RedirectResponse(CONSOLE_PREFIX, status_code=307)


def include_console(app: FastAPI) -> None:
    """Add the console pages, their static files under /console/static, and ``/`` to /console."""
    for router in CONSOLE_ROUTERS:
        app.include_router(router)
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="console-static")
    app.add_api_route("/", _start_page, methods=["GET"], include_in_schema=False)
    install_console_handlers(app)
