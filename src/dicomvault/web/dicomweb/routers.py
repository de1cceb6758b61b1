"""Assemble the DICOMweb routers under one base path, each route behind the authentication hook.

Every service module exposes an ``APIRouter`` named ``router`` with paths
relative to the DICOMweb base. A new service is added to SERVICE_ROUTERS.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI

from dicomvault.web.auth import require_dicomweb_access
from dicomvault.web.dicomweb import frames, qido, rendered, retrieve, stow, wado_uri
from dicomvault.web.dicomweb.resources import DICOMWEB_PREFIX

# Routers under DICOMWEB_PREFIX. Literal paths must come before the routes
# whose parameters would also match them, so the order matters.
SERVICE_ROUTERS: list[APIRouter] = [
    qido.router,
    retrieve.router,
    frames.router,
    rendered.router,
    stow.router,  # STOW-RS: POST /studies and /studies/{study}
]
# Routers at the root of the HTTP server.
ROOT_ROUTERS: list[APIRouter] = [wado_uri.router]


def include_dicomweb(app: FastAPI) -> None:
    """Add the DICOMweb routes to ``app``, all depending on the authentication hook."""
    access = [Depends(require_dicomweb_access)]
    dicomweb = APIRouter(prefix=DICOMWEB_PREFIX, dependencies=access)
    for router in SERVICE_ROUTERS:
        dicomweb.include_router(router)
    app.include_router(dicomweb)
    for router in ROOT_ROUTERS:
        app.include_router(router, dependencies=access)
