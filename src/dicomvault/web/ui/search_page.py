"""Console search page: fields for the common keys and the query language, results paged.

The page runs the same search as GET /api/search
(:func:`dicomvault.web.search_results.search_sorted`). An htmx request gets
only the results part of the page; a plain request gets the whole page, so
every link also works without JavaScript.
"""

from __future__ import annotations

import dataclasses
import logging
import urllib.parse
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import HTMLResponse

from dicomvault.archive import Archive, IndexUnavailableError
from dicomvault.dicom.query_language import QueryLanguageError, parse
from dicomvault.web.search_results import LEVELS, SearchOutcome, SortKeyError, search_sorted
from dicomvault.web.ui.query_form import (
    ADVANCED_FIELD,
    DATE_FROM_FIELD,
    DATE_TO_FIELD,
    KEYWORD_FIELDS,
    FormQuery,
    FormValueError,
    build_query,
)
from dicomvault.web.ui.rendering import CONSOLE_PREFIX, ConsoleSession, render_page

LOGGER = logging.getLogger(__name__)

router = APIRouter(prefix=CONSOLE_PREFIX, include_in_schema=False)

PAGE_SIZES = (25, 50, 100)
FORM_FIELDS = (
    *(keyword for keyword, _ in KEYWORD_FIELDS),
    DATE_FROM_FIELD,
    DATE_TO_FIELD,
    ADVANCED_FIELD,
)
COMMON_MODALITIES = ("CT", "MR", "US", "CR", "DX", "MG", "NM", "PT", "XA", "RF", "OT", "SR", "SEG")


@dataclasses.dataclass(frozen=True)
class Column:
    """A column of the results table: its heading and the keyword it shows and sorts by."""

    label: str
    keyword: str


COLUMNS: dict[str, tuple[Column, ...]] = {
    "patient": (
        Column("Patient name", "PatientName"),
        Column("Patient ID", "PatientID"),
        Column("Birth date", "PatientBirthDate"),
        Column("Sex", "PatientSex"),
        Column("Studies", "NumberOfPatientRelatedStudies"),
    ),
    "study": (
        Column("Patient name", "PatientName"),
        Column("Patient ID", "PatientID"),
        Column("Study date", "StudyDate"),
        Column("Modalities", "ModalitiesInStudy"),
        Column("Accession", "AccessionNumber"),
        Column("Description", "StudyDescription"),
        Column("Series", "NumberOfStudyRelatedSeries"),
        Column("Instances", "NumberOfStudyRelatedInstances"),
    ),
    "series": (
        Column("Patient name", "PatientName"),
        Column("Study date", "StudyDate"),
        Column("Modality", "Modality"),
        Column("Number", "SeriesNumber"),
        Column("Description", "SeriesDescription"),
        Column("Instances", "NumberOfSeriesRelatedInstances"),
    ),
    "instance": (
        Column("Patient name", "PatientName"),
        Column("Modality", "Modality"),
        Column("Series", "SeriesNumber"),
        Column("Instance", "InstanceNumber"),
        Column("Frames", "NumberOfFrames"),
        Column("SOP Instance UID", "SOPInstanceUID"),
    ),
}


@dataclasses.dataclass(frozen=True)
class SearchError:
    """A message for the form, with a caret line under the advanced text when it has a column."""

    message: str
    field: str = ""
    caret: str = ""


def _url(params: dict[str, str], **changes: str | int) -> str:
    merged = {**params, **{name: str(value) for name, value in changes.items()}}
    non_empty = {name: value for name, value in merged.items() if value}
    return f"{CONSOLE_PREFIX}/search?" + urllib.parse.urlencode(non_empty)


def _caret_error(exc: QueryLanguageError, text: str) -> SearchError:
    return SearchError(
        f"The query has an error at column {exc.column}: {exc.reason}",
        ADVANCED_FIELD,
        text + "\n" + " " * (exc.column - 1) + "^",
    )


def _run(
    request: Request, user: str, form: dict[str, str], level: str, sort: str
) -> tuple[FormQuery | None, SearchOutcome | None, SearchError | None]:
    """Search with the form; return the query, the outcome or an error for the form."""
    advanced = form.get(ADVANCED_FIELD, "").strip()
    if advanced:
        # Parsed alone first, so that an error's column is a column of the text as typed.
        try:
            parse(advanced)
        except QueryLanguageError as exc:
            return None, None, _caret_error(exc, advanced)
    try:
        form_query = build_query(form, level)
    except FormValueError as exc:
        return None, None, SearchError(str(exc), exc.field)
    try:
        archive: Archive = request.app.state.archive
        address = request.client.host if request.client else ""
        outcome = search_sorted(archive, form_query.text, LEVELS[level], sort, user, address)
        return form_query, outcome, None
    except QueryLanguageError as exc:
        return form_query, None, SearchError(f"Invalid search: {exc.reason}")
    except SortKeyError as exc:
        return form_query, None, SearchError(str(exc))


@router.get("/search")
def search_page(
    request: Request,
    session: ConsoleSession,
    level: str = "study",
    sort: str = "",
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=max(PAGE_SIZES))] = PAGE_SIZES[0],
    run: bool = False,
) -> HTMLResponse:
    """Show the search form and, once it is sent (``run``), a page of results.

    Notes
    -----
    - 200: the page; a syntax error is shown on it, with its position.
    - 503: the index database failed.
    """
    level = level if level in LEVELS else "study"
    form = {name: request.query_params.get(name, "") for name in FORM_FIELDS}
    params = {**form, "level": level, "sort": sort, "limit": str(limit), "run": "1"}
    form_query, outcome, error = None, None, None
    status_code = status.HTTP_200_OK
    if run:
        try:
            form_query, outcome, error = _run(request, session.user.name, form, level, sort)
        except IndexUnavailableError as exc:
            LOGGER.error("Console search of user %s failed: %s", session.user.name, exc)
            error = SearchError("The index database failed; try again later.")
            status_code = status.HTTP_503_SERVICE_UNAVAILABLE

    csv_url = ""
    if form_query is not None and outcome is not None:
        csv_query = {"q": form_query.text, "level": level, "sort": sort}
        csv_url = "/api/search.csv?" + urllib.parse.urlencode(csv_query)
    context = {
        "form": form,
        "level": level,
        "levels": list(LEVELS),
        "sort": sort,
        "offset": offset,
        "limit": limit,
        "page_sizes": PAGE_SIZES,
        "keyword_fields": KEYWORD_FIELDS,
        "modalities": COMMON_MODALITIES,
        "columns": COLUMNS[level],
        "run": run,
        "outcome": outcome,
        "matches": outcome.matches[offset : offset + limit] if outcome else [],
        "query_text": form_query.text if form_query else "",
        "error": error,
        "csv_url": csv_url,
        "params": params,
        "url": _url,
    }
    template = "search_results.html" if request.headers.get("HX-Request") else "search.html"
    return render_page(request, template, session, context, status_code=status_code)
