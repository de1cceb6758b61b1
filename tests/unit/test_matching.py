"""Unit tests for parsing C-FIND identifiers and for PS3.4 C.2.2.2 matching."""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from dicomvault.dicom.attributes import Level
from dicomvault.dicom.matching import (
    Condition,
    MatchKind,
    MatchOptions,
    Query,
    QueryError,
    ReturnKey,
    has_wildcard,
    json_item_record,
    keyword_vr,
    normalize_bound,
    normalize_person_name,
    normalize_stored_time,
    normalize_value,
    parse_identifier,
    person_name_from_json,
    wildcard_regex,
)

JAPANESE_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"
KOREAN_NAME = "Hong^Gildong=洪^吉洞=홍^길동"
DATE_FORMS = "expected YYYYMMDD, a range YYYYMMDD-YYYYMMDD, or an open range YYYYMMDD- or -YYYYMMDD"
TIME_FORMS = "expected HH, HHMM, HHMMSS or HHMMSS.FFFFFF, or a range of those joined by '-'"
DATETIME_FORMS = (
    "expected YYYYMMDDHHMMSS.FFFFFF with optional trailing components and UTC offset, "
    "or a range joined by '-'"
)
CASE_SENSITIVE = MatchOptions(person_name_case_insensitive=False)
COMBINED = MatchOptions(combined_date_time=True)

# Leading spaces and trailing spaces or carets are padding that
# normalization removes, so a '?' put in their place has nothing to match.
PADDING_FREE_NAMES = st.text(alphabet=string.ascii_letters + "^ ", min_size=1, max_size=24).filter(
    lambda name: not name.startswith(" ") and not name.endswith((" ", "^"))
)


def make_element(keyword: str, value: Any) -> DataElement:
    """Build an identifier element with the dictionary VR and no value validation.

    Matching keys may hold values that are invalid for their VR, such as a
    range in a DA key or a wildcard in a CS key (PS3.4 C.2.2.2), and pydicom
    would otherwise warn about them.
    """
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE)


def make_item(**keys: Any) -> Dataset:
    """Build a dataset from keyword arguments, used for identifiers and sequence items."""
    ds = Dataset()
    for keyword, value in keys.items():
        ds.add(make_element(keyword, value))
    return ds


def make_identifier(level: str | None = "STUDY", **keys: Any) -> Dataset:
    """Build a C-FIND identifier, without Query/Retrieve Level when ``level`` is None."""
    ds = make_item(**keys)
    if level is not None:
        ds.QueryRetrieveLevel = level
    return ds


def make_query(level: str = "STUDY", options: MatchOptions | None = None, **keys: Any) -> Query:
    """Parse a Study Root identifier built from keyword arguments."""
    return parse_identifier(make_identifier(level, **keys), options=options)


def keyword_arguments(keyword: str, value: Any) -> dict[str, Any]:
    """Return ``{keyword: value}`` for passing a parametrized key to :func:`make_query`."""
    return {keyword: value}


def only_condition(query: Query) -> Condition:
    """Return the single condition of ``query``."""
    assert len(query.conditions) == 1, query.conditions
    return query.conditions[0]


def parse_error(level: str = "STUDY", **keys: Any) -> str:
    """Return the message of the QueryError that parsing the identifier raises."""
    with pytest.raises(QueryError) as excinfo:
        make_query(level, **keys)
    return str(excinfo.value)


def code_item(value: str, scheme: str = "99LOCAL") -> dict[str, Any]:
    """Return a DICOM JSON code sequence item with Code Value and Coding Scheme Designator."""
    return {
        "00080100": {"vr": "SH", "Value": [value]},
        "00080102": {"vr": "SH", "Value": [scheme]},
    }


class TestParseIdentifier:
    def test_missing_level(self) -> None:
        with pytest.raises(QueryError) as excinfo:
            parse_identifier(make_identifier(level=None, PatientName="Doe"))
        assert str(excinfo.value) == "The identifier has no Query/Retrieve Level (0008,0052)"

    @pytest.mark.parametrize("level", ["FOO", ""], ids=["unknown", "empty"])
    def test_invalid_level(self, level: str) -> None:
        assert parse_error(level) == (
            "Query/Retrieve Level (0008,0052) must be PATIENT, STUDY, SERIES or IMAGE, "
            f"got '{level}'"
        )

    def test_patient_level_in_study_root(self) -> None:
        assert parse_error("PATIENT") == (
            "Query/Retrieve Level PATIENT is not part of the Study Root information model; "
            "use Patient Root or level STUDY"
        )

    def test_patient_level_in_patient_root(self) -> None:
        query = parse_identifier(make_identifier("PATIENT", PatientID="123"), "PATIENT")
        assert query.level is Level.PATIENT
        assert query.information_model == "PATIENT"

    @pytest.mark.parametrize(
        ("text", "level"),
        [("STUDY", Level.STUDY), ("SERIES", Level.SERIES), ("IMAGE", Level.IMAGE)],
        ids=["study", "series", "image"],
    )
    def test_level(self, text: str, level: Level) -> None:
        assert make_query(text).level is level

    def test_return_key_order(self) -> None:
        # A dataset keeps its elements in tag order, which is the order of the
        # encoded request whatever order the keys were added in.
        query = make_query(
            StudyInstanceUID="", PatientName="", Modality="", StudyDate="", AccessionNumber=""
        )
        keywords = [key.keyword for key in query.return_keys]
        assert keywords == [
            "StudyDate",
            "AccessionNumber",
            "Modality",
            "PatientName",
            "StudyInstanceUID",
        ]

    def test_return_key_fields(self) -> None:
        query = make_query(PatientName="Doe*")
        assert query.return_keys == (ReturnKey(0x00100010, "PatientName", "PN"),)

    def test_empty_key_is_return_key(self) -> None:
        query = make_query(PatientID="")
        assert [key.keyword for key in query.return_keys] == ["PatientID"]
        assert query.conditions == ()

    def test_sequence_return_key(self) -> None:
        item = make_item(CodeValue="", CodingSchemeDesignator="")
        query = make_query(ProcedureCodeSequence=[item])
        assert query.return_keys == (
            ReturnKey(0x00081032, "ProcedureCodeSequence", "SQ", (0x00080100, 0x00080102)),
        )

    def test_empty_sequence_return_key(self) -> None:
        query = make_query(ProcedureCodeSequence=[])
        assert query.return_keys == (ReturnKey(0x00081032, "ProcedureCodeSequence", "SQ", ()),)

    @pytest.mark.parametrize(
        "keyword", ["QueryRetrieveLevel", "SpecificCharacterSet"], ids=["level", "charset"]
    )
    def test_control_element_not_return_key(self, keyword: str) -> None:
        query = make_query(SpecificCharacterSet="ISO_IR 192", PatientName="")
        assert keyword not in {key.keyword for key in query.return_keys}

    @pytest.mark.parametrize(
        ("keyword", "value"),
        [
            ("RetrieveAETitle", "ARCHIVE"),
            ("InstanceAvailability", "ONLINE"),
            ("TimezoneOffsetFromUTC", "+0100"),
        ],
        ids=["retrieve-ae", "availability", "timezone"],
    )
    def test_control_key_not_condition(self, keyword: str, value: str) -> None:
        query = make_query(**keyword_arguments(keyword, value))
        assert query.conditions == ()
        assert [key.keyword for key in query.return_keys] == [keyword]

    def test_group_length_ignored(self) -> None:
        identifier = make_identifier(PatientName="")
        identifier.add(DataElement(0x00100000, "UL", 18))
        query = parse_identifier(identifier)
        assert [key.tag for key in query.return_keys] == [0x00100010]

    def test_key_below_level_not_condition(self) -> None:
        query = make_query("STUDY", Modality="CT")
        assert query.conditions == ()
        assert [key.keyword for key in query.return_keys] == ["Modality"]

    def test_key_below_level_does_not_filter(self) -> None:
        query = make_query("STUDY", Modality="CT", SOPInstanceUID="1.2.3")
        assert query.matches({"Modality": ["MR"], "SOPInstanceUID": ["9.9"]})

    def test_key_above_level_is_condition(self) -> None:
        query = make_query("SERIES", PatientID="123")
        assert only_condition(query).keyword == "PatientID"

    def test_computed_attribute_is_condition(self) -> None:
        query = make_query("STUDY", ModalitiesInStudy="CT")
        assert only_condition(query).keyword == "ModalitiesInStudy"

    def test_keywords(self) -> None:
        query = make_query(
            options=COMBINED, PatientName="", StudyDate="20200101-", StudyTime="1000-"
        )
        assert query.keywords == {"PatientName", "StudyDate", "StudyTime"}


class TestSingleValueMatching:
    @pytest.mark.parametrize(
        ("stored", "expected"),
        [
            ("ID123", True),
            ("ID1234", False),
            ("ID12", False),
            ("id123", False),
            ("ID123  ", True),
            ("  ID123", True),
        ],
        ids=["equal", "longer", "shorter", "other-case", "trailing-spaces", "leading-spaces"],
    )
    def test_long_string(self, stored: str, expected: bool) -> None:
        query = make_query(PatientID="ID123")
        assert query.matches({"PatientID": [stored]}) is expected

    def test_condition_kind(self) -> None:
        assert only_condition(make_query(PatientID="ID123")).kind is MatchKind.SINGLE

    @pytest.mark.parametrize(
        "record",
        [{}, {"PatientID": []}, {"PatientID": [""]}],
        ids=["missing", "no-values", "empty-value"],
    )
    def test_empty_stored_value(self, record: dict[str, list[str]]) -> None:
        assert not make_query(PatientID="ID123").matches(record)

    @pytest.mark.parametrize(
        ("stored", "expected"),
        [(["MR", "CT"], True), (["MR", "US"], False)],
        ids=["one-of-values", "none-of-values"],
    )
    def test_multi_valued_stored(self, stored: list[str], expected: bool) -> None:
        query = make_query(ModalitiesInStudy="CT")
        assert query.matches({"ModalitiesInStudy": stored}) is expected

    def test_all_conditions_must_match(self) -> None:
        query = make_query(PatientID="ID123", AccessionNumber="A1")
        assert not query.matches({"PatientID": ["ID123"], "AccessionNumber": ["A2"]})


class TestUniversalMatching:
    @pytest.mark.parametrize(
        "keyword",
        ["PatientName", "PatientID", "StudyDate", "StudyTime", "StudyInstanceUID"],
    )
    def test_empty_key(self, keyword: str) -> None:
        assert make_query(**keyword_arguments(keyword, "")).conditions == ()

    def test_spaces_only(self) -> None:
        assert make_query(PatientID="   ").conditions == ()

    @pytest.mark.parametrize(
        ("keyword", "value"),
        [("PatientName", "*"), ("PatientID", "*"), ("StudyDescription", "**")],
        ids=["person-name", "long-string", "double-star"],
    )
    def test_only_star(self, keyword: str, value: str) -> None:
        assert make_query(**keyword_arguments(keyword, value)).conditions == ()

    def test_matches_missing_value(self) -> None:
        assert make_query(PatientName="*").matches({})

    def test_uid_star(self) -> None:
        # UI takes no wildcards, but a lone "*" is still read as universal matching.
        assert make_query(StudyInstanceUID="*").conditions == ()

    def test_date_star(self) -> None:
        assert parse_error(StudyDate="*") == f"Invalid date '*' in StudyDate: {DATE_FORMS}"


class TestWildcardMatching:
    @pytest.mark.parametrize(
        ("pattern", "stored", "expected"),
        [
            ("DOE*", "DOE^JOHN", True),
            ("DOE*", "DOE", True),
            ("DOE*", "ROE^JOHN", False),
            ("*JOHN", "DOE^JOHN", True),
            ("*JOHN", "DOE^JOHNNY", False),
            ("DOE*JOHN", "DOE^JOHN", True),
            ("DOE*JOHN", "DOEJOHN", True),
            ("DOE*JOHN", "DOE^JANE", False),
            ("D*E*N", "DOE^JOHN", True),
        ],
        ids=[
            "end",
            "end-empty-run",
            "end-mismatch",
            "start",
            "start-mismatch",
            "middle",
            "middle-empty-run",
            "middle-mismatch",
            "several",
        ],
    )
    def test_star(self, pattern: str, stored: str, expected: bool) -> None:
        query = make_query(PatientName=pattern)
        assert query.matches({"PatientName": [stored]}) is expected

    @pytest.mark.parametrize(
        ("stored", "expected"),
        [("DOE", True), ("DAE", True), ("DE", False), ("DOOE", False)],
        ids=["one", "other-one", "none", "two"],
    )
    def test_question_mark(self, stored: str, expected: bool) -> None:
        query = make_query(PatientName="D?E")
        assert query.matches({"PatientName": [stored]}) is expected

    def test_condition_kind(self) -> None:
        assert only_condition(make_query(PatientID="AB*")).kind is MatchKind.WILDCARD

    @pytest.mark.parametrize(
        ("pattern", "stored", "expected"),
        [
            ("A.C*", "A.CD", True),
            ("A.C*", "ABCD", False),
            ("X(1*", "X(12", True),
            ("X(1*", "X1", False),
            ("[AB]*", "[AB]C", True),
            ("[AB]*", "A", False),
            ("A+?", "A+B", True),
            ("A+?", "AAB", False),
            ("$^*", "$^X", True),
        ],
        ids=[
            "dot",
            "dot-not-any",
            "parenthesis",
            "parenthesis-not-group",
            "brackets",
            "brackets-not-class",
            "plus",
            "plus-not-repeat",
            "anchors",
        ],
    )
    def test_regex_characters_literal(self, pattern: str, stored: str, expected: bool) -> None:
        query = make_query(StudyDescription=pattern)
        assert query.matches({"StudyDescription": [stored]}) is expected

    def test_long_string_case_sensitive(self) -> None:
        query = make_query(StudyDescription="chest*")
        assert not query.matches({"StudyDescription": ["CHEST PA"]})

    def test_code_string(self) -> None:
        query = make_query("SERIES", Modality="C?")
        assert query.matches({"Modality": ["CT"]})

    def test_uid_is_single_value(self) -> None:
        # UI takes no wildcards (PS3.4 C.2.2.2.4), so "1.2.*" is a literal value.
        assert only_condition(make_query(StudyInstanceUID="1.2.*")).kind is MatchKind.SINGLE

    def test_uid_not_expanded(self) -> None:
        query = make_query(StudyInstanceUID="1.2.*")
        assert not query.matches({"StudyInstanceUID": ["1.2.3"]})

    def test_age_string_not_wildcard(self) -> None:
        query = make_query(PatientAge="04?Y")
        assert not query.matches({"PatientAge": ["045Y"]})

    def test_integer_string_not_wildcard(self) -> None:
        identifier = make_identifier("SERIES")
        # pydicom cannot convert '1*' to an integer, so a decoded identifier
        # keeps the text as it arrived. This element is built the same way.
        identifier.add(DataElement(0x00200011, "IS", "1*", already_converted=True))
        query = parse_identifier(identifier)
        assert not query.matches({"SeriesNumber": ["12"]})

    @given(name=PADDING_FREE_NAMES, data=st.data())
    def test_question_mark_property(self, name: str, data: st.DataObject) -> None:
        index = data.draw(st.integers(min_value=0, max_value=len(name) - 1))
        pattern = name[:index] + "?" + name[index + 1 :]
        query = make_query(PatientName=pattern)
        assert query.matches({"PatientName": [name]})

    @given(name=PADDING_FREE_NAMES, data=st.data())
    def test_prefix_star_property(self, name: str, data: st.DataObject) -> None:
        length = data.draw(st.integers(min_value=0, max_value=len(name)))
        query = make_query(PatientName=name[:length] + "*")
        assert query.matches({"PatientName": [name]})


class TestListMatching:
    @pytest.mark.parametrize(
        ("stored", "expected"),
        [("1.2.3", True), ("1.2.4", True), ("1.2.5", False), ("1.2.3.4", False)],
        ids=["first", "second", "other", "longer"],
    )
    def test_uid_list(self, stored: str, expected: bool) -> None:
        query = make_query(StudyInstanceUID="1.2.3\\1.2.4")
        assert query.matches({"StudyInstanceUID": [stored]}) is expected

    def test_uid_list_condition(self) -> None:
        condition = only_condition(make_query(StudyInstanceUID="1.2.3\\1.2.4"))
        assert condition.kind is MatchKind.LIST
        assert condition.values == ("1.2.3", "1.2.4")

    def test_uid_list_wildcard(self) -> None:
        assert parse_error(StudyInstanceUID="1.2.3\\1.2.*") == (
            "StudyInstanceUID is a list of UIDs and may not contain wildcards"
        )

    @pytest.mark.parametrize(
        ("stored", "expected"),
        [("CT", True), ("MR", True), ("US", False), ("ct", False)],
        ids=["first", "second", "other", "other-case"],
    )
    def test_code_string_list(self, stored: str, expected: bool) -> None:
        query = make_query("SERIES", Modality="CT\\MR")
        assert query.matches({"Modality": [stored]}) is expected

    @pytest.mark.parametrize(
        ("stored", "expected"),
        [("doe^john", True), ("SMITH^JANE", True), ("Roe^Richard", False)],
        ids=["single-value-item", "wildcard-item", "no-item"],
    )
    def test_person_name_list(self, stored: str, expected: bool) -> None:
        query = make_query(PatientName="Doe^John\\Smith*")
        assert query.matches({"PatientName": [stored]}) is expected

    def test_date_list(self) -> None:
        assert parse_error(StudyDate="20200101\\20200102") == (
            "StudyDate (DA) may not hold a list of values, got '20200101\\20200102'"
        )


class TestPersonNames:
    @pytest.mark.parametrize(
        ("options", "pattern", "expected"),
        [
            (None, "doe^john", True),
            (None, "doe*", True),
            (CASE_SENSITIVE, "doe^john", False),
            (CASE_SENSITIVE, "doe*", False),
            (CASE_SENSITIVE, "Doe^John", True),
            (CASE_SENSITIVE, "Doe*", True),
        ],
        ids=[
            "insensitive-single",
            "insensitive-wildcard",
            "sensitive-single",
            "sensitive-wildcard",
            "sensitive-same-case",
            "sensitive-same-case-wildcard",
        ],
    )
    def test_case(self, options: MatchOptions | None, pattern: str, expected: bool) -> None:
        query = make_query(options=options, PatientName=pattern)
        assert query.matches({"PatientName": ["Doe^John"]}) is expected

    def test_case_insensitive_condition(self) -> None:
        condition = only_condition(make_query(PatientName="doe^john"))
        assert condition.case_insensitive
        assert condition.value == "DOE^JOHN"

    def test_other_vr_case_sensitive(self) -> None:
        assert not only_condition(make_query(PatientID="abc")).case_insensitive

    @pytest.mark.parametrize(
        ("pattern", "stored"),
        [
            ("Doe^John^^", "Doe^John"),
            ("Doe^John", "Doe^John^^^"),
            ("Doe^John", "Doe^John  "),
            ("Doe^John", "Doe^John\x00"),
            ("Doe^John", "Doe^John^ ^ "),
            ("Doe^John", "Doe^John=="),
            ("Doe^J*", "Doe^John^^"),
            ("Doe^John^^  ", "Doe^John"),
        ],
        ids=[
            "query-carets",
            "stored-carets",
            "stored-spaces",
            "stored-nul",
            "stored-padded-components",
            "stored-empty-groups",
            "wildcard-stored-carets",
            "query-carets-and-spaces",
        ],
    )
    def test_padding_insignificant(self, pattern: str, stored: str) -> None:
        query = make_query(PatientName=pattern)
        assert query.matches({"PatientName": [stored]})

    @pytest.mark.parametrize(
        ("pattern", "expected"),
        [
            ("Yamada^Tarou", True),
            ("YAMADA^TAROU", True),
            ("山田^太郎", True),
            ("やまだ^たろう", True),
            ("Yamada*", True),
            ("山田*", True),
            ("*たろう", True),
            ("山田^太?", True),
            ("山田^花子", False),
            ("山田^太", False),
            ("Yamada^Hanako", False),
            (JAPANESE_NAME, True),
        ],
        ids=[
            "alphabetic",
            "alphabetic-upper",
            "ideographic",
            "phonetic",
            "alphabetic-wildcard",
            "ideographic-wildcard",
            "phonetic-wildcard",
            "ideographic-question-mark",
            "ideographic-other",
            "ideographic-prefix",
            "alphabetic-other",
            "all-groups",
        ],
    )
    def test_japanese_groups(self, pattern: str, expected: bool) -> None:
        query = make_query(PatientName=pattern)
        assert query.matches({"PatientName": [JAPANESE_NAME]}) is expected

    @pytest.mark.parametrize(
        ("pattern", "expected"),
        [
            ("Hong^Gildong", True),
            ("hong^gildong", True),
            ("洪^吉洞", True),
            ("홍^길동", True),
            ("홍*", True),
            ("*길동", True),
            ("洪^吉?", True),
            ("홍^길?", True),
            ("김^철수", False),
            ("Kim*", False),
        ],
        ids=[
            "alphabetic",
            "alphabetic-lower",
            "ideographic",
            "phonetic",
            "phonetic-wildcard",
            "phonetic-suffix",
            "ideographic-question-mark",
            "phonetic-question-mark",
            "phonetic-other",
            "alphabetic-other",
        ],
    )
    def test_korean_groups(self, pattern: str, expected: bool) -> None:
        query = make_query(PatientName=pattern)
        assert query.matches({"PatientName": [KOREAN_NAME]}) is expected

    def test_groups_in_query_match_whole_name(self) -> None:
        query = make_query(PatientName="Yamada^Tarou=山田^花子")
        assert not query.matches({"PatientName": [JAPANESE_NAME]})

    def test_question_mark_sharp_s(self) -> None:
        query = make_query(PatientName="Strau?")
        assert query.matches({"PatientName": ["Strauß"]})


class TestRangeMatching:
    @pytest.mark.parametrize(
        ("stored", "expected"),
        [
            ("20191231", False),
            ("20200101", True),
            ("20200102", True),
            ("20200103", True),
            ("20200104", False),
            ("2020.01.02", True),
        ],
        ids=["before", "low", "inside", "high", "after", "acr-nema-form"],
    )
    def test_date_closed(self, stored: str, expected: bool) -> None:
        query = make_query(StudyDate="20200101-20200103")
        assert query.matches({"StudyDate": [stored]}) is expected

    @pytest.mark.parametrize(
        ("stored", "expected"),
        [("19000101", True), ("20200101", True), ("20200102", False)],
        ids=["long-before", "bound", "after"],
    )
    def test_date_open_low(self, stored: str, expected: bool) -> None:
        query = make_query(StudyDate="-20200101")
        assert query.matches({"StudyDate": [stored]}) is expected

    @pytest.mark.parametrize(
        ("stored", "expected"),
        [("20191231", False), ("20200101", True), ("20991231", True)],
        ids=["before", "bound", "long-after"],
    )
    def test_date_open_high(self, stored: str, expected: bool) -> None:
        query = make_query(StudyDate="20200101-")
        assert query.matches({"StudyDate": [stored]}) is expected

    @pytest.mark.parametrize(
        ("stored", "expected"),
        [("20191231", False), ("20200101", True), ("20200102", False)],
        ids=["day-before", "same-day", "day-after"],
    )
    def test_date_single(self, stored: str, expected: bool) -> None:
        query = make_query(StudyDate="20200101")
        assert query.matches({"StudyDate": [stored]}) is expected

    def test_date_bounds(self) -> None:
        condition = only_condition(make_query(StudyDate="20200101-20200103"))
        assert condition.kind is MatchKind.RANGE
        assert (condition.low, condition.high) == ("20200101", "20200103")

    def test_date_open_bound_is_none(self) -> None:
        condition = only_condition(make_query(StudyDate="20200101-"))
        assert condition.high is None

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("2020xx01", f"Invalid date '2020xx01' in StudyDate: {DATE_FORMS}"),
            ("20201301", f"Invalid date '20201301' in StudyDate: {DATE_FORMS}"),
            ("20200132", f"Invalid date '20200132' in StudyDate: {DATE_FORMS}"),
            (
                "20200102-20200101",
                "Invalid range '20200102-20200101' in StudyDate: "
                "the lower bound is after the upper bound",
            ),
            ("-", "Invalid range '-' in StudyDate: both bounds are empty"),
            ("2020-20200101", f"Invalid date '2020' in StudyDate: {DATE_FORMS}"),
        ],
        ids=["letters", "month-13", "day-32", "reversed", "no-bounds", "short-low-bound"],
    )
    def test_invalid_date(self, value: str, message: str) -> None:
        assert parse_error(StudyDate=value) == message

    @pytest.mark.parametrize(
        ("stored", "expected"),
        [
            ("095959", False),
            ("1000", True),
            ("1130", True),
            ("115959.999999", True),
            ("1200", False),
        ],
        ids=["before", "low", "inside", "end-of-high-hour", "after"],
    )
    def test_time_hours(self, stored: str, expected: bool) -> None:
        query = make_query(StudyTime="10-11")
        assert query.matches({"StudyTime": [stored]}) is expected

    @pytest.mark.parametrize(
        ("stored", "expected"),
        [
            ("102959", False),
            ("1030", True),
            ("103059.9", True),
            ("1031", False),
            ("10", True),
            ("10:30:15", True),
        ],
        ids=[
            "second-before",
            "same-minute",
            "end-of-minute",
            "next-minute",
            "stored-hour",
            "acr-nema-form",
        ],
    )
    def test_time_minute(self, stored: str, expected: bool) -> None:
        query = make_query(StudyTime="1030")
        assert query.matches({"StudyTime": [stored]}) is expected

    @pytest.mark.parametrize(
        ("stored", "expected"),
        [
            ("103000.4", False),
            ("103000.5", True),
            ("103000.55", True),
            ("103001.7", True),
            ("103002", False),
        ],
        ids=["tenth-before", "low", "inside-low-tenth", "inside-high-second", "after"],
    )
    def test_time_fraction(self, stored: str, expected: bool) -> None:
        query = make_query(StudyTime="103000.5-103001")
        assert query.matches({"StudyTime": [stored]}) is expected

    def test_time_bounds(self) -> None:
        condition = only_condition(make_query(StudyTime="10-1030"))
        assert (condition.low, condition.high) == ("100000.000000", "103059.999999")

    def test_time_across_midnight_rejected(self) -> None:
        # PS3.4 C.2.2.2.5.1 does not support TM ranges across midnight.
        assert parse_error(StudyTime="2300-0100") == (
            "Invalid range in StudyTime: the lower bound is after the upper bound; time "
            "ranges across midnight need a date range with combined date and time matching, "
            "or a DT attribute"
        )

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("2500", "Invalid time '2500' in StudyTime: a component is out of range"),
            ("1060", "Invalid time '1060' in StudyTime: a component is out of range"),
            ("10xx", f"Invalid time '10xx' in StudyTime: {TIME_FORMS}"),
            ("-", "Invalid range '-' in StudyTime: both bounds are empty"),
        ],
        ids=["hour-25", "minute-60", "letters", "no-bounds"],
    )
    def test_invalid_time(self, value: str, message: str) -> None:
        assert parse_error(StudyTime=value) == message

    @pytest.mark.parametrize(
        ("stored", "expected"),
        [
            ("20200101223000", False),
            ("20200101233000", True),
            ("20200102003000", True),
            ("20200102020000", False),
        ],
        ids=["day-one-before", "day-one-inside", "day-two-inside", "day-two-after"],
    )
    def test_datetime_across_midnight(self, stored: str, expected: bool) -> None:
        query = make_query("IMAGE", AcquisitionDateTime="20200101230000-20200102010000")
        assert query.matches({"AcquisitionDateTime": [stored]}) is expected

    def test_datetime_offsets_parse(self) -> None:
        query = make_query("IMAGE", AcquisitionDateTime="20200101120000+0100-20200101130000-0500")
        condition = only_condition(query)
        # Bounds with UTC offsets are compared in UTC.
        assert condition.low == "20200101110000.000000"
        assert condition.high == "20200101180000.999999"

    def test_datetime_negative_offset_single(self) -> None:
        # '-0500' after a complete value is a UTC offset, not a range separator.
        condition = only_condition(make_query("IMAGE", AcquisitionDateTime="20200101120000-0500"))
        assert (condition.low, condition.high) == ("20200101170000.000000", "20200101170000.999999")

    def test_datetime_open_range_with_offset(self) -> None:
        condition = only_condition(make_query("IMAGE", AcquisitionDateTime="20200101120000-0500-"))
        assert (condition.low, condition.high) == ("20200101170000.000000", None)

    @pytest.mark.parametrize(
        ("stored", "expected"),
        [
            ("2020", True),
            ("2019", False),
            ("202006", True),
            ("202005", False),
            ("20200701", True),
            ("20200702", False),
        ],
        ids=["year", "other-year", "month", "month-before", "day-high", "day-after"],
    )
    def test_datetime_reduced_precision(self, stored: str, expected: bool) -> None:
        # A stored value with missing components is the interval it covers,
        # and matches when that interval overlaps the range.
        query = make_query("IMAGE", AcquisitionDateTime="20200601-20200701")
        assert query.matches({"AcquisitionDateTime": [stored]}) is expected

    @pytest.mark.parametrize(
        ("stored", "expected"),
        [("10", True), ("09", False), ("1046", False)],
        ids=["hour-overlaps", "hour-before", "minute-after"],
    )
    def test_time_reduced_precision(self, stored: str, expected: bool) -> None:
        query = make_query(StudyTime="1030-1045")
        assert query.matches({"StudyTime": [stored]}) is expected

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("2020xx", f"Invalid date-time '2020xx' in AcquisitionDateTime: {DATETIME_FORMS}"),
            ("202013", "Invalid date-time '202013' in AcquisitionDateTime: month out of range"),
            ("20200132", "Invalid date-time '20200132' in AcquisitionDateTime: day out of range"),
            (
                "20200102-20200101",
                "Invalid range '20200102-20200101' in AcquisitionDateTime: "
                "the lower bound is after the upper bound",
            ),
        ],
        ids=["letters", "month-13", "day-32", "reversed"],
    )
    def test_invalid_datetime(self, value: str, message: str) -> None:
        assert parse_error("IMAGE", AcquisitionDateTime=value) == message

    @pytest.mark.parametrize(
        "record",
        [
            {},
            {"StudyDate": []},
            {"StudyDate": [""]},
            {"StudyDate": ["   "]},
            {"StudyDate": ["not-a-date"]},
        ],
        ids=["missing", "no-values", "empty", "spaces", "invalid"],
    )
    def test_empty_stored_value(self, record: dict[str, list[str]]) -> None:
        assert not make_query(StudyDate="-20991231").matches(record)

    def test_datetime_year_range(self) -> None:
        query = make_query("IMAGE", AcquisitionDateTime="2019-2020")
        assert query.matches({"AcquisitionDateTime": ["20200615120000"]})

    def test_datetime_offset_compared(self) -> None:
        # The range is 11:00 to 12:00 UTC, and the stored value is 11:30 UTC.
        query = make_query("IMAGE", AcquisitionDateTime="20200101120000+0100-20200101130000+0100")
        assert query.matches({"AcquisitionDateTime": ["20200101113000+0000"]})

    @pytest.mark.parametrize(
        ("keyword", "value"),
        [
            pytest.param(
                "StudyDate",
                "20200230",
                id="february-30",
            ),
            pytest.param(
                "StudyTime",
                "10.5",
                id="hour-with-fraction",
            ),
        ],
    )
    def test_invalid_value_rejected(self, keyword: str, value: str) -> None:
        with pytest.raises(QueryError):
            make_query(**keyword_arguments(keyword, value))


class TestCombinedDateTime:
    @pytest.mark.parametrize(
        ("date", "time", "expected"),
        [
            ("20200102", "0500", True),
            ("20200101", "0900", False),
            ("20200101", "1000", True),
            ("20200103", "1759", True),
            ("20200103", "1900", False),
            ("20200102", "", True),
        ],
        ids=[
            "middle-day-early",
            "first-day-early",
            "start",
            "last-day-end",
            "last-day-late",
            "no-time",
        ],
    )
    def test_closed_ranges(self, date: str, time: str, expected: bool) -> None:
        query = make_query(options=COMBINED, StudyDate="20200101-20200103", StudyTime="1000-1800")
        record = {"StudyDate": [date], "StudyTime": [time]}
        assert query.matches(record) is expected

    def test_independent_without_option(self) -> None:
        query = make_query(StudyDate="20200101-20200103", StudyTime="1000-1800")
        assert not query.matches({"StudyDate": ["20200102"], "StudyTime": ["0500"]})

    def test_condition(self) -> None:
        query = make_query(options=COMBINED, StudyDate="20200101-20200103", StudyTime="1000-1800")
        condition = only_condition(query)
        assert condition.kind is MatchKind.DATE_TIME_RANGE
        assert (condition.keyword, condition.time_keyword) == ("StudyDate", "StudyTime")
        assert condition.low == "20200101100000.000000"
        assert condition.high == "20200103180059.999999"

    def test_open_ranges(self) -> None:
        query = make_query(options=COMBINED, StudyDate="20200101-", StudyTime="1000-")
        assert query.matches({"StudyDate": ["20200102"], "StudyTime": ["0500"]})

    def test_date_only(self) -> None:
        query = make_query(options=COMBINED, StudyDate="20200101-20200103")
        assert only_condition(query).kind is MatchKind.RANGE

    def test_missing_date(self) -> None:
        query = make_query(options=COMBINED, StudyDate="20200101-20200103", StudyTime="1000-1800")
        assert not query.matches({"StudyTime": ["1200"]})

    def test_series_pair(self) -> None:
        query = make_query(
            "SERIES", options=COMBINED, SeriesDate="20200101-20200102", SeriesTime="2300-0100"
        )
        assert query.matches({"SeriesDate": ["20200102"], "SeriesTime": ["0030"]})

    def test_different_forms_independent(self) -> None:
        # Only keys with the same form of range matching are combined, so here
        # every matching study must also have a time of 10:00 or later.
        query = make_query(options=COMBINED, StudyDate="20200101-20200103", StudyTime="1000-")
        assert not query.matches({"StudyDate": ["20200103"], "StudyTime": ["0500"]})


class TestSequenceMatching:
    def test_matching_item(self) -> None:
        query = make_query(ProcedureCodeSequence=[make_item(CodeValue="XYZ")])
        record = {"ProcedureCodeSequence": [code_item("ABC"), code_item("XYZ")]}
        assert query.matches(record)

    def test_no_matching_item(self) -> None:
        query = make_query(ProcedureCodeSequence=[make_item(CodeValue="XYZ")])
        assert not query.matches({"ProcedureCodeSequence": [code_item("ABC")]})

    def test_empty_stored_sequence(self) -> None:
        query = make_query(ProcedureCodeSequence=[make_item(CodeValue="XYZ")])
        assert not query.matches({"ProcedureCodeSequence": []})

    def test_keys_match_in_one_item(self) -> None:
        item = make_item(CodeValue="XYZ", CodingSchemeDesignator="DCM")
        query = make_query(ProcedureCodeSequence=[item])
        record = {"ProcedureCodeSequence": [code_item("XYZ", "99A"), code_item("ABC", "DCM")]}
        assert not query.matches(record)

    def test_wildcard_sub_key(self) -> None:
        query = make_query(ProcedureCodeSequence=[make_item(CodeValue="XY*")])
        assert query.matches({"ProcedureCodeSequence": [code_item("XYZ")]})

    def test_empty_sub_key_ignored(self) -> None:
        item = make_item(CodeValue="XYZ", CodeMeaning="")
        query = make_query(ProcedureCodeSequence=[item])
        assert query.matches({"ProcedureCodeSequence": [code_item("XYZ")]})

    def test_condition(self) -> None:
        query = make_query(ProcedureCodeSequence=[make_item(CodeValue="XYZ", CodeMeaning="")])
        condition = only_condition(query)
        assert condition.kind is MatchKind.SEQUENCE
        assert [sub.keyword for sub in condition.items] == ["CodeValue"]

    def test_nested_sequence(self) -> None:
        inner = make_item(ScheduledProtocolCodeSequence=[make_item(CodeValue="XYZ")])
        query = make_query(RequestAttributesSequence=[inner])
        stored_item = {"00400008": {"vr": "SQ", "Value": [code_item("XYZ")]}}
        assert query.matches({"RequestAttributesSequence": [stored_item]})

    def test_only_empty_keys(self) -> None:
        item = make_item(CodeValue="", CodingSchemeDesignator="")
        assert make_query(ProcedureCodeSequence=[item]).conditions == ()

    def test_no_items(self) -> None:
        assert make_query(ProcedureCodeSequence=[]).conditions == ()

    def test_two_items(self) -> None:
        items = [make_item(CodeValue="XYZ"), make_item(CodeValue="ABC")]
        assert parse_error(ProcedureCodeSequence=items) == (
            "Sequence matching key ProcedureCodeSequence has 2 items; "
            "a matching key may contain a single item"
        )

    def test_invalid_sub_key(self) -> None:
        item = make_item(ScheduledProcedureStepStartDate="2020xx01")
        assert parse_error(ScheduledProcedureStepSequence=[item]) == (
            f"Invalid date '2020xx01' in ScheduledProcedureStepStartDate: {DATE_FORMS}"
        )


class TestNormalization:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("Doe^John^^", "Doe^John"),
            ("Doe^John^ ^ ", "Doe^John"),
            ("Doe^John==", "Doe^John"),
            ("Yamada^Tarou^=山田^太郎^=", "Yamada^Tarou=山田^太郎"),
            ("=山田^太郎", "=山田^太郎"),
            ("^John", "^John"),
            ("", ""),
        ],
        ids=[
            "carets",
            "padded-components",
            "empty-groups",
            "groups",
            "empty-first-group",
            "empty-family-name",
            "empty",
        ],
    )
    def test_person_name(self, value: str, expected: str) -> None:
        assert normalize_person_name(value) == expected

    @pytest.mark.parametrize(
        ("value", "vr", "case_insensitive", "expected"),
        [
            ("doe^john^ \x00", "PN", True, "DOE^JOHN"),
            ("doe^john", "PN", False, "doe^john"),
            ("  ID1  ", "LO", False, "ID1"),
            ("  indented text  ", "LT", False, "  indented text"),
            ("abc", "LO", True, "abc"),
        ],
        ids=[
            "person-name-upper",
            "person-name-kept",
            "long-string",
            "text-leading-spaces",
            "case-flag-only-for-pn",
        ],
    )
    def test_value(self, value: str, vr: str, case_insensitive: bool, expected: str) -> None:
        assert normalize_value(value, vr, case_insensitive) == expected

    @pytest.mark.parametrize(
        ("text", "vr", "lower", "upper"),
        [
            ("10", "TM", "100000.000000", "105959.999999"),
            ("1030", "TM", "103000.000000", "103059.999999"),
            ("103015", "TM", "103015.000000", "103015.999999"),
            ("103015.5", "TM", "103015.500000", "103015.599999"),
            ("103015.123456", "TM", "103015.123456", "103015.123456"),
            ("10:30", "TM", "103000.000000", "103059.999999"),
            ("2020", "DT", "20200101000000.000000", "20201231235959.999999"),
            ("202012", "DT", "20201201000000.000000", "20201231235959.999999"),
            ("20200615", "DT", "20200615000000.000000", "20200615235959.999999"),
            ("2020061510", "DT", "20200615100000.000000", "20200615105959.999999"),
            ("20200615103000.25+0200", "DT", "20200615083000.250000", "20200615083000.259999"),
            ("20200101", "DA", "20200101", "20200101"),
            ("2020.01.01", "DA", "20200101", "20200101"),
        ],
        ids=[
            "tm-hour",
            "tm-minute",
            "tm-second",
            "tm-tenth",
            "tm-microsecond",
            "tm-acr-nema",
            "dt-year",
            "dt-month",
            "dt-day",
            "dt-hour",
            "dt-offset",
            "da",
            "da-acr-nema",
        ],
    )
    def test_bound(self, text: str, vr: str, lower: str, upper: str) -> None:
        assert normalize_bound(text, vr, upper=False) == lower
        assert normalize_bound(text, vr, upper=True) == upper

    def test_bound_error_names_vr(self) -> None:
        with pytest.raises(QueryError) as excinfo:
            normalize_bound("25", "TM", upper=False)
        assert str(excinfo.value) == "Invalid time '25' in TM: a component is out of range"

    def test_bound_error_names_keyword(self) -> None:
        with pytest.raises(QueryError) as excinfo:
            normalize_bound("2020xx", "DT", upper=True, keyword="AcquisitionDateTime")
        assert str(excinfo.value) == (
            f"Invalid date-time '2020xx' in AcquisitionDateTime: {DATETIME_FORMS}"
        )

    @pytest.mark.parametrize(
        ("value", "vr", "expected"),
        [
            ("1030", "TM", "103000.000000"),
            ("20200101", "DA", "20200101"),
            ("2020", "DT", "20200101000000.000000"),
            ("", "TM", ""),
            ("   ", "DA", ""),
            ("2500", "TM", ""),
            ("abc", "TM", ""),
            ("20201301", "DA", ""),
            ("2020xx", "DT", ""),
        ],
        ids=[
            "time",
            "date",
            "datetime",
            "empty",
            "spaces",
            "hour-25",
            "letters",
            "month-13",
            "datetime-letters",
        ],
    )
    def test_stored_time(self, value: str, vr: str, expected: str) -> None:
        assert normalize_stored_time(value, vr) == expected

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("DOE*", True), ("D?E", True), ("DOE", False), ("", False)],
        ids=["star", "question-mark", "plain", "empty"],
    )
    def test_has_wildcard(self, value: str, expected: bool) -> None:
        assert has_wildcard(value) is expected

    def test_wildcard_regex(self) -> None:
        assert wildcard_regex("a.b*?").pattern == r"a\.b.*."

    def test_wildcard_regex_newline(self) -> None:
        assert wildcard_regex("A*B").fullmatch("A\nB")

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("Doe^John", "Doe^John"),
            ({"Alphabetic": "Doe^John"}, "Doe^John"),
            ({"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}, "Yamada^Tarou=山田^太郎"),
            ({"Ideographic": "山田^太郎"}, "=山田^太郎"),
            (
                {"Alphabetic": "Yamada^Tarou", "Phonetic": "やまだ^たろう"},
                "Yamada^Tarou==やまだ^たろう",
            ),
            (None, ""),
        ],
        ids=[
            "string",
            "alphabetic",
            "two-groups",
            "ideographic-only",
            "middle-group-empty",
            "null",
        ],
    )
    def test_person_name_from_json(self, value: Any, expected: str) -> None:
        assert person_name_from_json(value) == expected

    def test_json_item_record(self) -> None:
        item = {
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]},
            "00200013": {"vr": "IS", "Value": [7]},
            "00080100": {"vr": "SH"},
            "00091001": {"vr": "LO", "Value": ["private"]},
        }
        assert json_item_record(item) == {
            "PatientName": ["Doe^John"],
            "InstanceNumber": ["7"],
            "CodeValue": [],
            "00091001": ["private"],
        }

    @pytest.mark.parametrize(
        ("keyword", "tag", "expected"),
        [("PatientName", None, "PN"), ("", 0x00080020, "DA"), ("NoSuchKeyword", None, "UN")],
        ids=["keyword", "tag", "unknown"],
    )
    def test_keyword_vr(self, keyword: str, tag: int | None, expected: str) -> None:
        assert keyword_vr(keyword, tag) == expected
