"""Build the FastAPI application of the archive's HTTP API."""

from __future__ import annotations

from fastapi import FastAPI

from dicomvault import __version__
from dicomvault.ingest.manager import TaskManager
from dicomvault.web.api import tasks


def create_app(manager: TaskManager) -> FastAPI:
    """Return the application serving the REST API, with OpenAPI docs at /docs.

    NOTE: the API has no authentication yet, so anyone who can connect may
    start and cancel indexing tasks. It listens on 127.0.0.1 by default;
    do not expose it on other addresses until authentication exists.
    """
    app = FastAPI(
        title="dicomvault",
        version=__version__,
        description="Administration API of the dicomvault DICOM archive.",
    )
    app.state.manager = manager
    app.include_router(tasks.router)
    return app
