"""REST API of the console's search: a query language expression, paged and sorted, or as CSV."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from dicomvault.archive import Archive, IndexUnavailableError
from dicomvault.dicom.query_language import QueryLanguageError
from dicomvault.users import User
from dicomvault.web.identity import CurrentUser
from dicomvault.web.search_results import (
    LEVELS,
    MAX_SORTED_MATCHES,
    SearchOutcome,
    SortKeyError,
    search_sorted,
)

LOGGER = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["search"])

# Characters that make a spreadsheet read a cell as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

LevelName = Literal["patient", "study", "series", "instance"]
QueryText = Annotated[
    str, Query(description="Query language, e.g. PatientName:SMITH* AND Modality:CT")
]
SortKey = Annotated[str, Query(description="Keyword to sort by; '-' first for descending.")]


class SearchError(BaseModel):
    """The reason and position of a query language syntax error."""

    detail: str
    column: int = Field(description="1-based position of the problem in the query.")


class Match(BaseModel):
    """One matching patient, study, series or instance: its index columns and counts."""

    values: dict[str, list[str]]


class SearchPage(BaseModel):
    """A page of matches and the number of matches in all."""

    total: int = Field(description=f"Matches found, at most {MAX_SORTED_MATCHES}.")
    truncated: bool = Field(description=f"True when more than {MAX_SORTED_MATCHES} matched.")
    offset: int
    matches: list[Match]


def _search(
    request: Request, user: User, q: str, level: LevelName, sort: str
) -> SearchOutcome | JSONResponse:
    """Run the search; return a 400 response for a syntax error.

    Raises
    ------
    HTTPException
        400 for an unknown sort key, 503 when the index database fails.
    """
    archive: Archive = request.app.state.archive
    try:
        address = request.client.host if request.client else ""
        return search_sorted(archive, q, LEVELS[level], sort, user.name, address)
    except QueryLanguageError as exc:
        LOGGER.info("Search of user %s rejected: %s", user.name, exc)
        return JSONResponse(
            SearchError(detail=str(exc), column=exc.column).model_dump(),
            status_code=status.HTTP_400_BAD_REQUEST,
        )
    except SortKeyError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    except IndexUnavailableError as exc:
        LOGGER.error("Search %r of user %s failed: %s", q, user.name, exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "The index database failed; try again later"
        ) from None


@router.get(
    "/search",
    response_model=SearchPage,
    responses={400: {"model": SearchError, "description": "The query has a syntax error."}},
)
def search(
    request: Request,
    user: CurrentUser,
    q: QueryText,
    level: LevelName = "study",
    sort: SortKey = "",
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> Any:
    """Search the index with the query language; any logged-in user may search."""
    outcome = _search(request, user, q, level, sort)
    if isinstance(outcome, JSONResponse):
        return outcome
    page = outcome.matches[offset : offset + limit]
    return SearchPage(
        total=len(outcome.matches),
        truncated=outcome.truncated,
        offset=offset,
        matches=[Match(values=values) for values in page],
    )


def _csv_cell(values: list[str]) -> str:
    text = "\\".join(values)
    if text.startswith(FORMULA_STARTS):
        return "'" + text  # shown as text by spreadsheets, as OWASP advises for CSV injection
    return text


def _csv_lines(outcome: SearchOutcome, matches: list[dict[str, list[str]]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(outcome.keywords)
    for values in matches:
        writer.writerow([_csv_cell(values.get(keyword, [])) for keyword in outcome.keywords])
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


@router.get(
    "/search.csv",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/csv": {}}, "description": "One row per match."},
        400: {"model": SearchError, "description": "The query has a syntax error."},
    },
)
def search_csv(
    request: Request,
    user: CurrentUser,
    q: QueryText,
    level: LevelName = "study",
    sort: SortKey = "",
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_SORTED_MATCHES)] = MAX_SORTED_MATCHES,
) -> Any:
    """Export the matches of a search as CSV, with the parameters of GET /api/search.

    The first row has the keywords; each further row is one match, with
    the values of a multi-valued attribute separated by a backslash. A
    value that starts with =, +, -, @, a tab or a carriage return gets a
    leading apostrophe, so that spreadsheets show it as text and do not run
    it as a formula.
    """
    outcome = _search(request, user, q, level, sort)
    if isinstance(outcome, JSONResponse):
        return outcome
    matches = outcome.matches[offset : offset + limit]
    headers = {"Content-Disposition": f'attachment; filename="dicomvault-{level}-search.csv"'}
    if outcome.truncated:
        headers["Warning"] = f'299 dicomvault "More than {MAX_SORTED_MATCHES} matched"'
    return StreamingResponse(
        _csv_lines(outcome, matches), media_type="text/csv; charset=utf-8", headers=headers
    )
