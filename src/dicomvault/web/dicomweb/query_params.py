"""Turn the query string of a QIDO-RS request into the archive's query model (PS3.18 8.3.4).

The parameters become a C-FIND identifier, which
:func:`dicomvault.dicom.matching.parse_identifier` turns into a
:class:`~dicomvault.dicom.matching.Query`, so QIDO-RS and C-FIND match by the
same rules.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from dicomvault.dicom.attributes import (
    COLUMN_ATTRIBUTES,
    COMPUTED_ATTRIBUTES,
    CONTROL_KEYWORDS,
    Level,
    level_of_keyword,
)
from dicomvault.dicom.matching import (
    MatchOptions,
    Query,
    QueryError,
    fuzzy_person_name_conditions,
    parse_identifier,
)

LEVEL_RESOURCES = {
    Level.PATIENT: "patients",
    Level.STUDY: "studies",
    Level.SERIES: "series",
    Level.IMAGE: "instances",
}
_TAG_RE = re.compile(r"^[0-9A-Fa-f]{8}$")

# Result attributes of PS3.18 10.6.3.3 returned without includefield.
STUDY_RESULT_KEYWORDS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "InstanceAvailability",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "RetrieveURL",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_RESULT_KEYWORDS = (
    "Modality",
    "SeriesDescription",
    "RetrieveURL",
    "SeriesInstanceUID",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
)
INSTANCE_RESULT_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceAvailability",
    "RetrieveURL",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
)


class QueryParameterError(ValueError):
    """A QIDO-RS query parameter is malformed; the message names it and the accepted form."""


@dataclasses.dataclass(frozen=True)
class SearchRequest:
    """A parsed QIDO-RS request.

    Attributes
    ----------
    query : Query
        Matching conditions and the return keys, in the shared query model.
    limit : int or None
        Maximum number of results requested; None when not given.
    offset : int
        Number of matches to skip.
    include_all : bool
        Whether ``includefield=all`` asked for every available attribute.
    """

    query: Query
    limit: int | None
    offset: int
    include_all: bool


def default_keywords(level: Level, study_in_path: bool, series_in_path: bool) -> list[str]:
    """Return the result attributes of a search at ``level`` without includefield.

    A series or instance search that is not limited to one study also
    returns the study attributes, and an instance search not limited to one
    series the series attributes (PS3.18 10.6.3.3).
    """
    keywords: list[str] = []
    if level is Level.STUDY or not study_in_path:
        keywords += STUDY_RESULT_KEYWORDS
    if level is Level.SERIES or (level is Level.IMAGE and not series_in_path):
        keywords += SERIES_RESULT_KEYWORDS
    if level is Level.IMAGE:
        keywords += INSTANCE_RESULT_KEYWORDS
    return list(dict.fromkeys(keywords))


def index_keywords(level: Level) -> list[str]:
    """Return the index columns and computed attributes of ``level`` and the levels above.

    These are what ``includefield=all`` adds to study and series results;
    instance results get the whole stored header instead.
    """
    keywords = [attribute.keyword for attribute in COLUMN_ATTRIBUTES if attribute.level <= level]
    keywords += [keyword for keyword, kind in COMPUTED_ATTRIBUTES.items() if kind <= level]
    return keywords


def parse_search(
    params: Iterable[tuple[str, str]],
    level: Level,
    path_uids: Mapping[str, str],
    options: MatchOptions,
    max_limit: int,
) -> SearchRequest:
    """Parse the query parameters of a QIDO-RS search at ``level``.

    Parameters
    ----------
    params : iterable of (str, str)
        The decoded query parameters in request order; names may repeat.
    level : Level
        STUDY, SERIES or IMAGE.
    path_uids : Mapping
        UIDs of the resource path by keyword, such as
        ``{"StudyInstanceUID": "1.2.3"}``.
    options : MatchOptions
        Case sensitivity of person names.
    max_limit : int
        Largest ``limit`` accepted.

    Raises
    ------
    QueryParameterError
        If a parameter is unknown or malformed, or a key cannot be matched at
        this level.
    """
    matching: dict[str, list[str]] = {}
    includes: list[str] = []
    fuzzy = False
    limit: int | None = None
    offset = 0
    for name, value in params:
        if not name:
            continue  # some viewers send '?&key=value'
        if name == "includefield":
            includes.extend(item.strip() for item in value.split(",") if item.strip())
        elif name == "fuzzymatching":
            fuzzy = _parse_bool(name, value)
        elif name == "limit":
            limit = _parse_count(name, value, 1, max_limit)
        elif name == "offset":
            offset = _parse_count(name, value, 0, 2**31 - 1)
        else:
            matching.setdefault(name, []).append(value)

    identifier = Dataset()
    identifier.QueryRetrieveLevel = level.name
    for keyword, uid in path_uids.items():
        identifier.add(DataElement(parse_attribute(keyword)[0], "UI", uid))
    for name, values in matching.items():
        _add_matching_key(identifier, name, values, level, path_uids)

    include_all = any(item.lower() == "all" for item in includes)
    result_keywords = default_keywords(
        level, "StudyInstanceUID" in path_uids, "SeriesInstanceUID" in path_uids
    )
    for item in includes:
        if item.lower() != "all":
            result_keywords.append(_include_keyword(item))
    if include_all and level is not Level.IMAGE:
        result_keywords += index_keywords(level)
    for keyword in result_keywords:
        _add_return_key(identifier, keyword)

    try:
        query = parse_identifier(identifier, "STUDY", options)
    except QueryError as exc:
        raise QueryParameterError(str(exc)) from None
    if fuzzy:
        conditions = tuple(
            fuzzy_condition
            for condition in query.conditions
            for fuzzy_condition in fuzzy_person_name_conditions(condition)
        )
        query = dataclasses.replace(query, conditions=conditions)
    return SearchRequest(query, limit, offset, include_all)


def parse_attribute(text: str) -> tuple[int, str, str]:
    """Return (tag, keyword, VR) of an attribute given by keyword or 8-digit hex tag.

    Raises
    ------
    QueryParameterError
        If ``text`` is neither a known keyword nor a tag.
    """
    if _TAG_RE.match(text):
        tag = int(text, 16)
        try:
            vr = str(dictionary_VR(tag))
        except KeyError:
            vr = "UN"  # private or unknown tags are compared as text
        return tag, keyword_for_tag(tag) or "", vr
    tag_value = tag_for_keyword(text)
    if tag_value is None:
        raise QueryParameterError(
            f"Unknown query parameter '{text}': expected an attribute keyword such as "
            "PatientName, a tag such as 00100010, or one of includefield, fuzzymatching, "
            "limit, offset"
        )
    return int(tag_value), text, str(dictionary_VR(tag_value))


def _add_matching_key(
    identifier: Dataset,
    name: str,
    values: list[str],
    level: Level,
    path_uids: Mapping[str, str],
) -> None:
    path = [parse_attribute(part) for part in name.split(".")]
    tag, keyword, vr = path[0]
    if keyword in path_uids:
        raise QueryParameterError(
            f"{keyword} is already given in the resource path; remove it from the query"
        )
    if keyword in CONTROL_KEYWORDS:
        raise QueryParameterError(f"{keyword} cannot be used as a matching key in QIDO-RS")
    key_level = level_of_keyword(keyword)
    if key_level is not None and key_level > level:
        resource = {Level.SERIES: "series", Level.IMAGE: "instances"}[key_level]
        raise QueryParameterError(
            f"{keyword} is an attribute of {resource} and cannot be matched in a search for "
            f"{LEVEL_RESOURCES[level]}; search /{resource} instead"
        )
    if len(path) > 2:
        raise QueryParameterError(
            f"Invalid key '{name}': sequence matching supports one level, such as 00081110.00081150"
        )
    if len(path) == 2:
        if vr != "SQ":
            raise QueryParameterError(
                f"Invalid key '{name}': {keyword or f'{tag:08X}'} is not a sequence"
            )
        item = Dataset()
        sub_tag, _, sub_vr = path[1]
        item.add(_element(sub_tag, sub_vr, values, name))
        identifier.add(DataElement(tag, "SQ", [item]))
        return
    if vr == "SQ":
        raise QueryParameterError(
            f"Invalid key '{name}': a sequence is matched through one of its attributes, "
            f"such as {name}.00081150"
        )
    identifier.add(_element(tag, vr, values, name))


def _element(tag: int, vr: str, values: list[str], name: str) -> DataElement:
    # Repeated keys and comma-separated UIDs form a list (PS3.18 8.3.4.1).
    items = [item for value in values for item in (value.split(",") if vr == "UI" else [value])]
    text = "\\".join(item.strip() if vr == "UI" else item for item in items)
    if vr == "UI" and any("*" in item or "?" in item for item in items):
        raise QueryParameterError(
            f"{name} is a UID and may not contain wildcards; list several UIDs separated "
            "by commas instead"
        )
    if vr in {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"}:
        raise QueryParameterError(
            f"{name} has the binary VR {vr} and cannot be used as a matching key"
        )
    return DataElement(tag, vr, text, validation_mode=pydicom_config.IGNORE)


def _add_return_key(identifier: Dataset, keyword: str) -> None:
    if keyword in {"RetrieveURL", "QueryRetrieveLevel"}:
        tag = tag_for_keyword(keyword)
        if tag is not None and tag not in identifier:
            identifier.add(DataElement(tag, str(dictionary_VR(tag)), None))
        return
    tag, _, vr = parse_attribute(keyword)
    if tag in identifier:
        return
    identifier.add(DataElement(tag, vr, [] if vr == "SQ" else None))


def _include_keyword(text: str) -> str:
    tag, keyword, _ = parse_attribute(text)
    return keyword or f"{tag:08X}"


def _parse_bool(name: str, value: str) -> bool:
    text = value.strip().lower()
    if text in {"true", "false"}:
        return text == "true"
    raise QueryParameterError(f"'{name}' must be true or false, got '{value}'")


def _parse_count(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise QueryParameterError(
            f"'{name}' must be an integer from {low} to {high}, got '{value}'"
        ) from None
    if not low <= number <= high:
        raise QueryParameterError(f"'{name}' must be an integer from {low} to {high}, got {number}")
    return number
