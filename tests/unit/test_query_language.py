"""The console's query language: syntax, precedence, values, matching and errors."""

from __future__ import annotations

from typing import Any

import pytest

from dicomvault.dicom.matching import MatchKind
from dicomvault.dicom.query_language import (
    And,
    Not,
    Or,
    QueryLanguageError,
    Term,
    keywords,
    parse,
    terms,
)

SMITH_CT_2020: dict[str, list[Any]] = {
    "PatientName": ["Smith^John"],
    "PatientID": ["P-1"],
    "Modality": ["CT"],
    "StudyDate": ["20200615"],
    "StudyDescription": ["Chest (low dose)"],
}
JONES_MR_2019: dict[str, list[Any]] = {
    "PatientName": ["Jones^Ann"],
    "PatientID": ["P-2"],
    "Modality": ["MR"],
    "StudyDate": ["20191231"],
    "StudyDescription": ["Head"],
}


def matching(query: str) -> list[str]:
    expression = parse(query)
    return [
        str(record["PatientID"][0])
        for record in (SMITH_CT_2020, JONES_MR_2019)
        if expression.matches(record)
    ]


def term_keywords(query: str) -> list[str]:
    return [term.keyword for term in terms(parse(query))]


class TestPrecedence:
    def test_and_binds_tighter_than_or(self) -> None:
        expression = parse("Modality:CT AND PatientID:X OR Modality:MR")

        assert isinstance(expression, Or)
        assert isinstance(expression.operands[0], And)
        assert matching("Modality:CT AND PatientID:X OR Modality:MR") == ["P-2"]

    def test_parentheses_group(self) -> None:
        assert matching("Modality:CT AND (PatientID:X OR StudyDate:[20210101 TO *])") == []
        assert matching("Modality:CT AND (PatientID:X OR StudyDate:[20200101 TO *])") == ["P-1"]

    def test_terms_side_by_side_mean_and(self) -> None:
        assert isinstance(parse("Modality:CT PatientID:P-1"), And)
        assert matching("Modality:CT PatientID:P-2") == []

    def test_not_and_minus(self) -> None:
        assert matching("NOT Modality:CT") == ["P-2"]
        assert matching("-Modality:CT") == ["P-2"]
        assert matching("NOT NOT Modality:CT") == ["P-1"]
        assert isinstance(parse("NOT Modality:CT OR Modality:CT"), Or)
        assert isinstance(parse("NOT (Modality:CT OR Modality:MR)"), Not)

    def test_lower_case_operators_are_words(self) -> None:
        with pytest.raises(QueryLanguageError, match="'and' needs a field"):
            parse("Modality:CT and Modality:MR")


class TestValues:
    def test_wildcards_follow_the_vr(self) -> None:
        assert matching("PatientName:SM?TH*") == ["P-1"]
        assert matching("PatientName:smith*") == ["P-1"]  # person names ignore case
        term = parse("PatientName:J*")
        assert isinstance(term, Term) and term.condition is not None
        assert term.condition.kind is MatchKind.WILDCARD

    def test_only_star_is_universal(self) -> None:
        term = parse("StudyDescription:*")

        assert isinstance(term, Term) and term.condition is None
        assert matching("StudyDescription:*") == ["P-1", "P-2"]

    def test_quoted_phrase_keeps_spaces_and_specials(self) -> None:
        assert matching('StudyDescription:"Chest (low dose)"') == ["P-1"]
        assert matching('StudyDescription:"Chest*"') == ["P-1"]

    def test_escaped_characters(self) -> None:
        assert matching(r"StudyDescription:Chest\ \(low\ dose\)") == ["P-1"]
        term = parse(r"PatientID:a\:b\"c")
        assert isinstance(term, Term) and term.condition is not None
        assert term.condition.value == 'a:b"c'

    def test_escaped_operator_is_a_value(self) -> None:
        term = parse(r"PatientID:\OR")

        assert isinstance(term, Term) and term.condition is not None
        assert term.condition.value == "OR"

    def test_operator_word_as_value(self) -> None:
        term = parse("PatientID:AND")

        assert isinstance(term, Term) and term.condition is not None
        assert term.condition.value == "AND"

    def test_date_ranges(self) -> None:
        assert matching("StudyDate:[20200101 TO 20201231]") == ["P-1"]
        assert matching("StudyDate:[* TO 20191231]") == ["P-2"]
        assert matching("StudyDate:[20191231 TO *]") == ["P-1", "P-2"]
        assert matching("StudyDate:[* TO *]") == ["P-1", "P-2"]
        assert matching("StudyDate:-20191231") == ["P-2"]  # the DICOM range form also works

    def test_tag_as_field(self) -> None:
        assert term_keywords("00100020:P-1 OR 00080060:MR") == ["PatientID", "Modality"]
        assert matching("00100020:P-1") == ["P-1"]

    def test_uid_list(self) -> None:
        term = parse(r'StudyInstanceUID:"1.2.3\\1.2.4"')

        assert isinstance(term, Term) and term.condition is not None
        assert term.condition.values == ("1.2.3", "1.2.4")

    def test_keywords_of_the_terms(self) -> None:
        assert keywords(parse("Modality:CT OR PatientName:A*")) == {"Modality", "PatientName"}


class TestErrors:
    @pytest.mark.parametrize(
        ("query", "column", "message"),
        [
            ("", 1, "the query is empty"),
            ("   ", 1, "the query is empty"),
            ("SMITH", 1, "'SMITH' needs a field and a value"),
            ('"John Smith"', 1, "a phrase needs a field"),
            ("Modality:", 10, "Modality needs a value after ':', found end of the query"),
            ("Modality:CT AND", 16, "expected a term"),
            ("Modality:CT OR OR Modality:MR", 16, "expected a term such as Keyword:value, "),
            ("(Modality:CT", 13, "expected ')' to close the '(' at column 1"),
            ("Modality:CT)", 12, "unexpected ')'"),
            ("PatientNmae:SMITH", 1, "'PatientNmae' is not a DICOM keyword"),
            ("7FE10010:X", 1, "tag 7FE10010 is not in the DICOM dictionary"),
            ('StudyDescription:"open', 18, "the quoted phrase has no closing quote"),
            ("PatientID:abc\\", 14, "a backslash must be followed by a character"),
            ("StudyDate:{20200101 TO 20201231}", 11, "exclusive bounds"),
            ("PatientName:[A TO B]", 13, "ranges apply to dates and times (DA, TM, DT)"),
            ("StudyDate:[20200101 20201231]", 21, "expected TO between the bounds"),
            ("StudyDate:[20200101 TO 20201231", 32, "expected ']' to close the range"),
            ("StudyDate:[TO 20201231]", 12, "expected a lower bound"),
            ("StudyDate:2020-13-01", 11, "Invalid date"),
            ("StudyDate:[20201231 TO 20200101]", 11, "Invalid"),
            ("PatientID:A\\\\B", 11, "use OR between values instead of a backslash"),
            ('StudyInstanceUID:"1.2.3\\\\1.2.*"', 18, "may not contain wildcards"),
            ("Modality:CT OR (", 17, "expected a term"),
        ],
    )
    def test_error_names_the_column(self, query: str, column: int, message: str) -> None:
        with pytest.raises(QueryLanguageError) as raised:
            parse(query)

        assert raised.value.column == column, str(raised.value)
        assert message in raised.value.reason
        assert str(raised.value).startswith(f"column {column}: ")
