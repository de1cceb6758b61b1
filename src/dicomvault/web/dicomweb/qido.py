"""QIDO-RS: search for studies, series and instances (PS3.18 10.6)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status

from dicomvault.archive import Archive
from dicomvault.dicom.attributes import Level
from dicomvault.dicom.matching import MatchOptions
from dicomvault.events import QueryPerformed
from dicomvault.index.search import SearchResult
from dicomvault.web.auth import request_principal
from dicomvault.web.dicomweb.dicom_json import search_result_json
from dicomvault.web.dicomweb.media import (
    DICOM_JSON,
    MediaTypeError,
    parse_accept,
    single_acceptables,
)
from dicomvault.web.dicomweb.query_params import QueryParameterError, SearchRequest, parse_search
from dicomvault.web.dicomweb.resources import ArchiveDependency, check_uid, service_url

LOGGER = logging.getLogger(__name__)

router = APIRouter(tags=["QIDO-RS"])

# Warning header of a result cut at the server's maximum (PS3.18 8.3.4.4.1 / 10.6.3.2).
TRUNCATED_WARNING = (
    '299 dicomvault "The number of results exceeded the maximum supported by the server. '
    'Additional results can be requested."'
)
HEADER_BATCH = 200


def _search(
    request: Request,
    archive: Archive,
    level: Level,
    path_uids: dict[str, str],
) -> Response:
    """Run one QIDO-RS search and build the response.

    Notes
    -----
    - 200: a JSON array of matches (application/dicom+json).
    - 204: no entity matches, or ``offset`` skips every match; the body is
      empty (PS3.18 8.3.4.4.1).
    - 400: a query parameter is unknown or malformed, a value cannot be
      matched (such as an invalid date range), or a UID in the path is malformed.
    - 406: the Accept header names no JSON media type.
    - 503: the index database failed.
    """
    started = time.perf_counter()
    _check_accept(request)
    for keyword, value in path_uids.items():
        check_uid(keyword, value)
    settings = archive.settings
    options = MatchOptions(person_name_case_insensitive=settings.query.person_name_case_insensitive)
    max_matches = settings.query.max_matches
    try:
        search = parse_search(
            request.query_params.multi_items(), level, path_uids, options, max_matches
        )
    except QueryParameterError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None

    limit = min(search.limit or max_matches, max_matches)
    matches, truncated = _collect(archive, search, limit)
    client = request.client.host if request.client else ""
    keys = tuple(sorted(search.query.keywords))
    user = request_principal(request).name
    archive.events.publish(
        QueryPerformed(
            level.name,
            keys,
            len(matches),
            "",
            client,
            user,
            service="QIDO-RS",
            duration=time.perf_counter() - started,
        )
    )
    LOGGER.info(
        "QIDO-RS %s search from %s: %d matches%s",
        level.name,
        client,
        len(matches),
        " (cut at the limit)" if truncated else "",
    )
    if not matches:
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    body = _results_json(request, archive, search, matches)
    headers = {"Warning": TRUNCATED_WARNING} if truncated and search.limit is None else {}
    return Response(
        json.dumps(body, ensure_ascii=False).encode("utf-8"),
        media_type=DICOM_JSON,
        headers=headers,
    )


def _check_accept(request: Request) -> None:
    try:
        ranges = parse_accept(request.headers.get("accept"))
    except MediaTypeError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    if not single_acceptables(ranges, (DICOM_JSON, "application/json")):
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE,
            "Search results are available as application/dicom+json only; "
            'multipart/related; type="application/dicom+xml" is not supported',
        )


def _collect(
    archive: Archive, search: SearchRequest, limit: int
) -> tuple[list[SearchResult], bool]:
    """Return up to ``limit`` matches after ``offset``, and whether more matched."""
    matches: list[SearchResult] = []
    skipped = 0
    for result in archive.search(search.query):
        if skipped < search.offset:
            skipped += 1
            continue
        if len(matches) == limit:
            return matches, True
        matches.append(result)
    return matches, False


def _results_json(
    request: Request, archive: Archive, search: SearchRequest, matches: list[SearchResult]
) -> list[dict[str, Any]]:
    base = service_url(request)
    level = search.query.level
    headers: dict[int, dict[str, Any]] = {}
    if search.include_all and level is Level.IMAGE:
        pks = [result.pks[level] for result in matches]
        for start in range(0, len(pks), HEADER_BATCH):
            headers.update(archive.headers(level, pks[start : start + HEADER_BATCH]))
    body = []
    for result in matches:
        url = _retrieve_url(base, result)
        instance_url = url if level is Level.IMAGE else None
        extra = headers.get(result.pks[level]) if level is Level.IMAGE else None
        body.append(search_result_json(result, search.query.return_keys, url, instance_url, extra))
    return body


def _retrieve_url(base: str, result: SearchResult) -> str:
    record = result.record
    url = f"{base}/studies/{record['StudyInstanceUID'][0]}"
    if result.level >= Level.SERIES:
        url += f"/series/{record['SeriesInstanceUID'][0]}"
    if result.level >= Level.IMAGE:
        url += f"/instances/{record['SOPInstanceUID'][0]}"
    return url


@router.get("/studies", summary="Search for studies")
def search_studies(request: Request, archive: ArchiveDependency) -> Response:
    """Search for studies (QIDO-RS); see the module notes for the statuses."""
    return _search(request, archive, Level.STUDY, {})


@router.get("/series", summary="Search for series of all studies")
def search_series(request: Request, archive: ArchiveDependency) -> Response:
    """Search for series in every study (QIDO-RS)."""
    return _search(request, archive, Level.SERIES, {})


@router.get("/instances", summary="Search for instances of all studies")
def search_instances(request: Request, archive: ArchiveDependency) -> Response:
    """Search for instances in every study (QIDO-RS)."""
    return _search(request, archive, Level.IMAGE, {})


@router.get("/studies/{study}/series", summary="Search for series of a study")
def search_study_series(study: str, request: Request, archive: ArchiveDependency) -> Response:
    """Search for the series of one study (QIDO-RS)."""
    return _search(request, archive, Level.SERIES, {"StudyInstanceUID": study})


@router.get("/studies/{study}/instances", summary="Search for instances of a study")
def search_study_instances(study: str, request: Request, archive: ArchiveDependency) -> Response:
    """Search for the instances of one study (QIDO-RS)."""
    return _search(request, archive, Level.IMAGE, {"StudyInstanceUID": study})


@router.get(
    "/studies/{study}/series/{series}/instances", summary="Search for instances of a series"
)
def search_series_instances(
    study: str, series: str, request: Request, archive: ArchiveDependency
) -> Response:
    """Search for the instances of one series (QIDO-RS)."""
    return _search(
        request, archive, Level.IMAGE, {"StudyInstanceUID": study, "SeriesInstanceUID": series}
    )
