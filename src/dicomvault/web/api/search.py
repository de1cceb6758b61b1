"""REST API of the console's search: a query language expression, paged and sorted."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from dicomvault.archive import Archive, IndexUnavailableError
from dicomvault.dicom.attributes import COLUMN_ATTRIBUTES, Level
from dicomvault.dicom.matching import Query as QueryModel
from dicomvault.dicom.query_language import QueryLanguageError, parse, to_query
from dicomvault.web.identity import CurrentUser

LOGGER = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["search"])

# Maximum number of matches read and sorted. A search with more returns the first ones.
MAX_SORTED_MATCHES = 10_000


class SearchError(BaseModel):
    """The reason and position of a query language syntax error."""

    detail: str
    column: int = Field(description="1-based position of the problem in the query.")


class Match(BaseModel):
    """One matching patient, study, series or instance: its index columns."""

    values: dict[str, list[str]]


class SearchPage(BaseModel):
    """A page of matches and the number of matches in all."""

    total: int = Field(description=f"Matches found, at most {MAX_SORTED_MATCHES}.")
    truncated: bool = Field(description=f"True when more than {MAX_SORTED_MATCHES} matched.")
    offset: int
    matches: list[Match]


def _keywords(level: Level) -> list[str]:
    return [attribute.keyword for attribute in COLUMN_ATTRIBUTES if attribute.level <= level]


def _read_matches(
    archive: Archive, query: QueryModel, keywords: list[str]
) -> tuple[list[dict[str, list[str]]], bool]:
    """Return up to MAX_SORTED_MATCHES matches as keyword values, and whether more matched."""
    matches: list[dict[str, list[str]]] = []
    for result in archive.search(query):
        if len(matches) == MAX_SORTED_MATCHES:
            return matches, True
        values = {keyword: [str(v) for v in result.record.get(keyword, [])] for keyword in keywords}
        matches.append(values)
    return matches, False


def _sort_value(values: dict[str, list[str]], keyword: str) -> str:
    found = values.get(keyword) or [""]
    return str(found[0]).upper()


@router.get(
    "/search",
    response_model=SearchPage,
    responses={400: {"model": SearchError, "description": "The query has a syntax error."}},
)
def search(
    request: Request,
    user: CurrentUser,
    q: Annotated[str, Query(description="Query language, e.g. PatientName:SMITH* AND Modality:CT")],
    level: Literal["patient", "study", "series", "instance"] = "study",
    sort: Annotated[str, Query(description="Keyword to sort by; '-' first for descending.")] = "",
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> Any:
    """Search the index with the query language; any logged-in user may search."""
    search_level = Level.IMAGE if level == "instance" else Level[level.upper()]
    try:
        expression = parse(q)
    except QueryLanguageError as exc:
        LOGGER.info("Search of user %s rejected: %s", user.name, exc)
        return JSONResponse(
            SearchError(detail=str(exc), column=exc.column).model_dump(),
            status_code=status.HTTP_400_BAD_REQUEST,
        )

    keywords = _keywords(search_level)
    descending = sort.startswith("-")
    sort_keyword = sort.lstrip("-")
    if sort_keyword and sort_keyword not in keywords:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"Cannot sort by {sort_keyword!r}; choose one of {', '.join(keywords)}",
        )

    archive: Archive = request.app.state.archive
    try:
        matches, truncated = _read_matches(archive, to_query(expression, search_level), keywords)
    except IndexUnavailableError as exc:
        LOGGER.error("Search %r of user %s failed: %s", q, user.name, exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "The index database failed; try again later"
        ) from None

    if sort_keyword:
        matches.sort(key=lambda values: _sort_value(values, sort_keyword), reverse=descending)
    page = matches[offset : offset + limit]
    return SearchPage(
        total=len(matches),
        truncated=truncated,
        offset=offset,
        matches=[Match(values=values) for values in page],
    )
