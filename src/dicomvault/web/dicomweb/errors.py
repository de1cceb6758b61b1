"""Translate archive errors in DICOMweb routes into HTTP responses with a JSON message."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from dicomvault.archive import IndexUnavailableError

LOGGER = logging.getLogger(__name__)


async def index_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Return 503 when the index database fails; the client may try again later."""
    LOGGER.error("%s %s failed: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": "The index database is unavailable; try again later"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
    )


async def file_missing(request: Request, exc: Exception) -> JSONResponse:
    """Return 500 when a file the index lists is missing from storage."""
    LOGGER.error("%s %s: a stored file is missing: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {
            "detail": "The index lists a file that is missing from storage; "
            "store the instance again or remove it from the index"
        },
        status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers of the archive's errors on ``app``."""
    app.add_exception_handler(IndexUnavailableError, index_unavailable)
    app.add_exception_handler(FileNotFoundError, file_missing)
