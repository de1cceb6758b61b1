"""Tests of QIDO-RS query parameter parsing into the shared query model."""

from __future__ import annotations

import pytest

from dicomvault.dicom.attributes import Level
from dicomvault.dicom.matching import Condition, MatchKind, MatchOptions
from dicomvault.web.dicomweb.query_params import (
    QueryParameterError,
    SearchRequest,
    default_keywords,
    parse_attribute,
    parse_search,
)

OPTIONS = MatchOptions()
MAX_LIMIT = 1000


def parse(
    query: str, level: Level = Level.STUDY, path_uids: dict[str, str] | None = None
) -> SearchRequest:
    params = [tuple(item.split("=", 1)) for item in query.split("&") if item]
    return parse_search(params, level, path_uids or {}, OPTIONS, MAX_LIMIT)  # type: ignore[arg-type]


def conditions(request: SearchRequest) -> dict[str, Condition]:
    return {condition.keyword: condition for condition in request.query.conditions}


def return_keywords(request: SearchRequest) -> list[str]:
    return [key.keyword for key in request.query.return_keys]


class TestMatchingKeys:
    def test_keyword_single_value(self) -> None:
        condition = conditions(parse("PatientID=PAT-1"))["PatientID"]
        assert condition.kind is MatchKind.SINGLE
        assert condition.value == "PAT-1"

    def test_tag_key(self) -> None:
        condition = conditions(parse("00100020=PAT-1"))["PatientID"]
        assert condition.value == "PAT-1"

    def test_wildcard(self) -> None:
        condition = conditions(parse("PatientName=doe*"))["PatientName"]
        assert condition.kind is MatchKind.WILDCARD
        assert condition.value == "DOE*"

    def test_date_range(self) -> None:
        condition = conditions(parse("StudyDate=20240101-20240131"))["StudyDate"]
        assert condition.kind is MatchKind.RANGE
        assert (condition.low, condition.high) == ("20240101", "20240131")

    def test_uid_list_with_commas(self) -> None:
        condition = conditions(parse("StudyInstanceUID=1.2.3,1.2.4"))["StudyInstanceUID"]
        assert condition.kind is MatchKind.LIST
        assert condition.values == ("1.2.3", "1.2.4")

    def test_repeated_key_is_list(self) -> None:
        condition = conditions(parse("Modality=CT&Modality=MR", Level.SERIES))["Modality"]
        assert condition.values == ("CT", "MR")

    def test_sequence_item_key(self) -> None:
        request = parse("00081110.00081150=1.2.840.10008.3.1.2.3.1", Level.IMAGE)
        condition = conditions(request)["ReferencedStudySequence"]
        assert condition.kind is MatchKind.SEQUENCE
        assert condition.items[0].keyword == "ReferencedSOPClassUID"

    def test_path_uids_are_conditions(self) -> None:
        request = parse("", Level.SERIES, {"StudyInstanceUID": "1.2.3"})
        assert conditions(request)["StudyInstanceUID"].value == "1.2.3"

    def test_empty_value_is_universal(self) -> None:
        request = parse("PatientName=")
        assert "PatientName" not in conditions(request)
        assert "PatientName" in return_keywords(request)

    def test_empty_parameter_name_ignored(self) -> None:
        assert parse("&PatientID=1").query.conditions

    def test_fuzzy_matching_of_names(self) -> None:
        request = parse("PatientName=john&fuzzymatching=true")
        (condition,) = request.query.conditions
        assert condition.matches({"PatientName": ["Doe^John"]})
        assert condition.matches({"PatientName": ["Johnson^Ann"]})
        assert not condition.matches({"PatientName": ["Smith^Ann"]})

    def test_fuzzy_matching_needs_every_word(self) -> None:
        request = parse("PatientName=john smith&fuzzymatching=true")
        assert not request.query.matches({"PatientName": ["Doe^John"]})
        assert request.query.matches({"PatientName": ["Smith^John"]})


class TestControlParameters:
    def test_limit_and_offset(self) -> None:
        request = parse("limit=10&offset=20")
        assert (request.limit, request.offset) == (10, 20)

    def test_defaults(self) -> None:
        request = parse("")
        assert (request.limit, request.offset, request.include_all) == (None, 0, False)

    def test_includefield_keywords_and_tags(self) -> None:
        request = parse("includefield=BodyPartExamined,00081030&includefield=PatientAge")
        keywords = return_keywords(request)
        assert {"BodyPartExamined", "StudyDescription", "PatientAge"} <= set(keywords)

    def test_includefield_all(self) -> None:
        request = parse("includefield=all")
        assert request.include_all
        keywords = return_keywords(request)
        assert {"StudyDescription", "PatientSex", "SOPClassesInStudy"} <= set(keywords)
        assert "Modality" not in keywords

    def test_private_tag_include(self) -> None:
        request = parse("includefield=00091001")
        assert 0x00091001 in {key.tag for key in request.query.return_keys}


class TestDefaults:
    def test_study_level(self) -> None:
        keywords = default_keywords(Level.STUDY, False, False)
        assert "ModalitiesInStudy" in keywords
        assert "SeriesInstanceUID" not in keywords

    def test_series_of_one_study_omits_study_attributes(self) -> None:
        keywords = default_keywords(Level.SERIES, True, False)
        assert "PatientName" not in keywords
        assert "Modality" in keywords

    def test_instances_of_all_studies(self) -> None:
        keywords = default_keywords(Level.IMAGE, False, False)
        assert {"PatientName", "Modality", "SOPInstanceUID", "Rows"} <= set(keywords)


@pytest.mark.parametrize(
    ("query", "level", "message"),
    [
        ("NoSuchKeyword=1", Level.STUDY, "Unknown query parameter 'NoSuchKeyword'"),
        ("limit=0", Level.STUDY, "'limit' must be an integer from 1 to 1000, got 0"),
        ("limit=abc", Level.STUDY, "'limit' must be an integer from 1 to 1000, got 'abc'"),
        ("offset=-1", Level.STUDY, "'offset' must be an integer from 0"),
        ("fuzzymatching=1", Level.STUDY, "'fuzzymatching' must be true or false, got '1'"),
        ("StudyDate=2024", Level.STUDY, "Invalid date '2024' in StudyDate"),
        ("SOPInstanceUID=1.2", Level.STUDY, "SOPInstanceUID is an attribute of instances"),
        ("Modality=CT", Level.STUDY, "search /series instead"),
        ("SOPInstanceUID=1.2*", Level.IMAGE, "may not contain wildcards"),
        ("Rows=512", Level.IMAGE, "binary VR US"),
        ("ReferencedStudySequence=1", Level.IMAGE, "is matched through one of its attributes"),
        ("00100020.00100010=A", Level.STUDY, "is not a sequence"),
        ("QueryRetrieveLevel=STUDY", Level.STUDY, "cannot be used as a matching key"),
        ("RetrieveURL=http://host", Level.STUDY, "cannot be used as a matching key"),
        ("includefield=NoSuchKeyword", Level.STUDY, "Unknown query parameter 'NoSuchKeyword'"),
    ],
    ids=[
        "unknown-key",
        "limit-zero",
        "limit-text",
        "offset",
        "fuzzy",
        "date",
        "lower-level",
        "series-key-in-study",
        "uid-wildcard",
        "binary",
        "sequence-alone",
        "not-sequence",
        "control-key",
        "retrieve-url-key",
        "unknown-include",
    ],
)
def test_rejected_parameter(query: str, level: Level, message: str) -> None:
    with pytest.raises(QueryParameterError) as excinfo:
        parse(query, level)
    assert message in str(excinfo.value)


def test_key_repeating_path_uid_rejected() -> None:
    with pytest.raises(QueryParameterError, match="already given in the resource path"):
        parse("StudyInstanceUID=1.2", Level.SERIES, {"StudyInstanceUID": "1.2.3"})


def test_parse_attribute_forms() -> None:
    assert parse_attribute("PatientName") == (0x00100010, "PatientName", "PN")
    assert parse_attribute("00100010") == (0x00100010, "PatientName", "PN")
    assert parse_attribute("00091001") == (0x00091001, "", "UN")
