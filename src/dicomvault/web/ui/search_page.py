"""Console search page: fields for the common keys and the query language, results paged."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from dicomvault.web.ui.rendering import CONSOLE_PREFIX, ConsoleSession, render_page

LOGGER = logging.getLogger(__name__)

router = APIRouter(prefix=CONSOLE_PREFIX, include_in_schema=False)


@router.get("/search")
def search_page(request: Request, session: ConsoleSession) -> HTMLResponse:
    """Show the search form."""
    return render_page(request, "search.html", session)
