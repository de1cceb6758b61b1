"""Search the archive with the query language and sort the matches.

One implementation serves GET /api/search, its CSV export and the console's
search page, so all three return the same matches in the same order.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

from pydicom.datadict import dictionary_VR, tag_for_keyword

from dicomvault.archive import Archive
from dicomvault.dicom.attributes import COLUMN_ATTRIBUTES, Level
from dicomvault.dicom.matching import Condition, Query, ReturnKey
from dicomvault.dicom.query_language import parse, to_query
from dicomvault.events import QueryPerformed

# Maximum number of matches read and sorted. A search with more returns the first ones.
MAX_SORTED_MATCHES = 10_000

LEVELS: dict[str, Level] = {
    "patient": Level.PATIENT,
    "study": Level.STUDY,
    "series": Level.SERIES,
    "instance": Level.IMAGE,
}

# Attributes the index computes per entity (counts, modalities), returned
# beside the index columns of each level.
COUNT_KEYWORDS: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: ("NumberOfPatientRelatedStudies",),
    Level.STUDY: (
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: ("NumberOfSeriesRelatedInstances",),
    Level.IMAGE: (),
}


class SortKeyError(ValueError):
    """The sort key is not a keyword of the search level; the message lists the valid ones."""


@dataclasses.dataclass(frozen=True)
class SearchOutcome:
    """The sorted matches of a search, each a mapping of ``keywords`` to values."""

    keywords: list[str]
    matches: list[dict[str, list[str]]]
    truncated: bool


def result_keywords(level: Level) -> list[str]:
    """Return the keywords each match of ``level`` carries: index columns, then counts."""
    columns = [attribute.keyword for attribute in COLUMN_ATTRIBUTES if attribute.level <= level]
    return columns + list(COUNT_KEYWORDS[level])


def _return_keys(level: Level) -> list[ReturnKey]:
    keys = []
    for keyword in COUNT_KEYWORDS[level]:
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        keys.append(ReturnKey(tag, keyword, dictionary_VR(tag)))
    return keys


def _read_matches(
    archive: Archive, query: Query, keywords: list[str]
) -> Iterator[dict[str, list[str]]]:
    for result in archive.search(query):
        yield {keyword: [str(v) for v in result.record.get(keyword, [])] for keyword in keywords}


def _sort_value(values: dict[str, list[str]], keyword: str) -> tuple[int, float, str]:
    found = values.get(keyword) or [""]
    text = str(found[0])
    try:
        return (0, float(text), "")  # counts and numbers sort by value, before text
    except ValueError:
        return (1, 0.0, text.upper())


def search_sorted(
    archive: Archive,
    text: str,
    level: Level,
    sort: str = "",
    user: str = "",
    address: str = "",
) -> SearchOutcome:
    """Return the matches of the query ``text`` at ``level``, sorted by ``sort``.

    With ``user``, the search is published as a query of that user from
    ``address`` for the audit trail.

    ``sort`` is a keyword of :func:`result_keywords`, with a leading '-' for
    descending order; empty keeps the index order. At most
    MAX_SORTED_MATCHES matches are read; ``truncated`` is True when more matched.

    Raises
    ------
    QueryLanguageError
        If ``text`` has a syntax error, with its column.
    SortKeyError
        If ``sort`` names no keyword of ``level``.
    IndexUnavailableError
        If the index database fails.
    """
    started = time.perf_counter()
    expression = parse(text)
    _check_sort(level, sort)
    query = to_query(expression, level, _return_keys(level))
    outcome = _collect(archive, query, sort)
    if user:
        keys = tuple(sorted(query.keywords))
        archive.events.publish(
            QueryPerformed(
                level.name,
                keys,
                len(outcome.matches),
                "",
                address,
                user,
                service="console",
                duration=time.perf_counter() - started,
            )
        )
    return outcome


def list_sorted(
    archive: Archive, level: Level, conditions: tuple[Condition, ...], sort: str = ""
) -> SearchOutcome:
    """Return the entities of ``level`` matching every one of ``conditions``, sorted by ``sort``.

    For the console's drill-down, such as the series of one study. ``sort``
    and the limit are as in :func:`search_sorted`.

    Raises
    ------
    SortKeyError
        If ``sort`` names no keyword of ``level``.
    IndexUnavailableError
        If the index database fails.
    """
    _check_sort(level, sort)
    return _collect(archive, Query(level, conditions, tuple(_return_keys(level))), sort)


def _check_sort(level: Level, sort: str) -> None:
    keyword = sort.lstrip("-")
    keywords = result_keywords(level)
    if keyword and keyword not in keywords:
        raise SortKeyError(f"Cannot sort by {keyword!r}; choose one of {', '.join(keywords)}")


def _collect(archive: Archive, query: Query, sort: str) -> SearchOutcome:
    keywords = result_keywords(query.level)
    matches: list[dict[str, list[str]]] = []
    truncated = False
    for values in _read_matches(archive, query, keywords):
        if len(matches) == MAX_SORTED_MATCHES:
            truncated = True
            break
        matches.append(values)

    sort_keyword = sort.lstrip("-")
    if sort_keyword:
        matches.sort(
            key=lambda values: _sort_value(values, sort_keyword), reverse=sort.startswith("-")
        )
    return SearchOutcome(keywords, matches, truncated)
