"""Build the FastAPI application of the archive's HTTP API."""

from __future__ import annotations

from fastapi import FastAPI

from dicomvault import __version__
from dicomvault.archive import Archive
from dicomvault.ingest.manager import TaskManager
from dicomvault.web.api import tasks
from dicomvault.web.dicomweb import stow

# Base path of the DICOMweb services (PS3.18 8.2), below the server's root.
DICOMWEB_PREFIX = "/dicomweb"


def create_app(manager: TaskManager, archive: Archive | None = None) -> FastAPI:
    """Return the application serving the REST API, with OpenAPI docs at /docs.

    With ``archive``, the application also serves DICOMweb STOW-RS under
    ``DICOMWEB_PREFIX``.

    NOTE: the API has no authentication yet, so anyone who can connect may
    start and cancel indexing tasks and store instances. It listens on
    127.0.0.1 by default; do not expose it on other addresses until
    authentication exists.
    """
    app = FastAPI(
        title="dicomvault",
        version=__version__,
        description="Administration API and DICOMweb services of the dicomvault DICOM archive.",
    )
    app.state.manager = manager
    app.include_router(tasks.router)
    if archive is not None:
        app.state.archive = archive
        app.include_router(stow.router, prefix=DICOMWEB_PREFIX)
    return app
