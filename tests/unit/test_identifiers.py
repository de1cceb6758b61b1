"""C-FIND response Identifiers built and encoded by hand, checked against pydicom's."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pydicom
import pytest
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dsutils import encode

from dicomvault.dicom.attributes import Level
from dicomvault.dicom.matching import ReturnKey
from dicomvault.dimse import identifiers
from dicomvault.dimse.identifiers import build_identifier, encode_identifier
from dicomvault.index.search import SearchResult
from tests.support.corpus import PYDICOM_CHARSET_FILES, PYDICOM_TEST_FILES, bundled_files

LITTLE_ENDIAN = [
    pytest.param(ImplicitVRLittleEndian, id="implicit"),
    pytest.param(ExplicitVRLittleEndian, id="explicit"),
]
# Every character set term in pydicom's table, as a client may request it.
CHARSET_TERMS = [term for term in python_encoding if term]
STRING_VRS = ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM")
STRING_VRS += ("UC", "UI", "UR", "UT")


def pydicom_bytes(ds: Dataset, transfer_syntax: UID) -> bytes | None:
    """Return ``ds`` as pynetdicom's encode writes it with pydicom, leaving ``ds`` unchanged.

    pydicom keeps the bytes it encoded in each PersonName, so the test
    encodes a copy.
    """
    return encode(
        copy.deepcopy(ds),
        transfer_syntax.is_implicit_VR,
        transfer_syntax.is_little_endian,
        transfer_syntax.is_deflated,
    )


def study_identifier(**overrides: Any) -> Dataset:
    """Return a STUDY level response as build_identifier makes it, with ``overrides``."""
    values: dict[str, Any] = {
        "QueryRetrieveLevel": "STUDY",
        "RetrieveAETitle": "DICOMVAULT",
        "PatientName": "DOE^JOHN",
        "PatientID": "P0000123",
        "StudyDate": "20200101",
        "StudyInstanceUID": "1.2.826.0.1.3680043.10.1.1826",  # odd length: padded with NUL
        "AccessionNumber": None,
        "StudyDescription": "CT chest",
        "ModalitiesInStudy": ["CT", "MR"],
        "NumberOfStudyRelatedInstances": "20",
        **overrides,
    }
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def fail_if_called(*args: Any) -> bytes:
    raise AssertionError("the Identifier went through pydicom's writer")


def string_elements_of(path: Any) -> Dataset:
    """Return the top-level string elements of a file, rebuilt from their text as C-FIND does."""
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some bundled files are non-conformant on purpose
        source = pydicom.dcmread(path, stop_before_pixels=True)
        for element in source:
            if element.VR not in STRING_VRS or isinstance(element.value, bytes):
                continue
            value = element.value
            if isinstance(value, MultiValue):
                text: Any = [str(item) for item in value]
            else:
                text = None if value is None else str(value)
            try:
                ds.add(DataElement(element.tag, element.VR, text))
            except ValueError:
                continue  # such as IS '1A' in badVR.dcm, which pydicom cannot convert
    return ds


class TestEncodeIdentifier:
    @pytest.mark.parametrize("transfer_syntax", LITTLE_ENDIAN)
    def test_same_bytes_as_pydicom(self, transfer_syntax: UID) -> None:
        ds = study_identifier()

        assert encode_identifier(ds, transfer_syntax) == pydicom_bytes(ds, transfer_syntax)

    @pytest.mark.parametrize("transfer_syntax", LITTLE_ENDIAN)
    def test_ascii_not_written_by_pydicom(
        self, transfer_syntax: UID, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        expected = pydicom_bytes(study_identifier(), transfer_syntax)
        monkeypatch.setattr(identifiers, "encode", fail_if_called)

        assert encode_identifier(study_identifier(), transfer_syntax) == expected

    @pytest.mark.parametrize("transfer_syntax", LITTLE_ENDIAN)
    @pytest.mark.parametrize(
        ("keyword", "value"),
        [
            pytest.param("PatientName", "Yamada^Tarou=YAMADA^TAROU", id="name_groups"),
            pytest.param("PatientName", "DOE^JOHN^^^", id="name_empty_components"),
            pytest.param("PatientName", ["A^B", "C^D"], id="names"),
            pytest.param("PatientName", "", id="empty_name"),
            pytest.param("StudyDescription", "odd", id="odd_length"),
            pytest.param("NumberOfStudyRelatedInstances", "0", id="zero"),
            pytest.param("PatientWeight", "70.50", id="decimal_string"),
            pytest.param("ReferencedFrameNumber", ["1", "2", "003"], id="integer_strings"),
            pytest.param("StudyComments", "line 1\r\nline 2\\not a delimiter", id="text_lines"),
            pytest.param("StudyTime", "101500.5", id="time"),
            pytest.param("RetrieveURL", "http://127.0.0.1/wado", id="uri"),
            pytest.param("ModalitiesInStudy", [], id="no_modality"),
            pytest.param("PatientAge", "042Y", id="age"),
        ],
    )
    def test_string_values(self, transfer_syntax: UID, keyword: str, value: Any) -> None:
        ds = study_identifier(**{keyword: value})

        assert encode_identifier(ds, transfer_syntax) == pydicom_bytes(ds, transfer_syntax)

    @pytest.mark.parametrize("transfer_syntax", LITTLE_ENDIAN)
    def test_long_text(self, transfer_syntax: UID) -> None:
        ds = study_identifier()
        ds.add_new(0x00189074, "DT", "20200101101500")
        ds.add_new(0x0040A160, "UT", "x" * 70_001)  # a 4-byte length in Explicit VR

        assert encode_identifier(ds, transfer_syntax) == pydicom_bytes(ds, transfer_syntax)

    @pytest.mark.parametrize("transfer_syntax", LITTLE_ENDIAN)
    @pytest.mark.parametrize("term", CHARSET_TERMS)
    def test_ascii_in_every_character_set(self, transfer_syntax: UID, term: str) -> None:
        ds = study_identifier(SpecificCharacterSet=term)
        with warnings.catch_warnings():
            # pydicom warns that it cannot encode with ISO 2022 IR 87 or IR 159
            # as the only term, then writes the ASCII bytes all the same.
            warnings.simplefilter("ignore")
            expected = pydicom_bytes(ds, transfer_syntax)

        assert encode_identifier(ds, transfer_syntax) == expected

    @pytest.mark.parametrize("transfer_syntax", LITTLE_ENDIAN)
    @pytest.mark.parametrize(
        ("charset", "name"),
        [
            pytest.param("ISO_IR 100", "Müller^Jürgen", id="latin1"),
            pytest.param("ISO_IR 192", "Yamada^Tarou=山田^太郎", id="utf8"),
            pytest.param(
                ["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう", id="iso2022"
            ),
        ],
    )
    def test_non_ascii_written_by_pydicom(
        self, transfer_syntax: UID, charset: Any, name: str
    ) -> None:
        ds = study_identifier(SpecificCharacterSet=charset, PatientName=name)

        assert encode_identifier(ds, transfer_syntax) == pydicom_bytes(ds, transfer_syntax)

    def test_escape_character_written_by_pydicom(self, monkeypatch: pytest.MonkeyPatch) -> None:
        ds = study_identifier(StudyDescription="\x1b$B")
        monkeypatch.setattr(identifiers, "encode", lambda *args: b"from pydicom")

        assert encode_identifier(ds, ImplicitVRLittleEndian) == b"from pydicom"

    @pytest.mark.parametrize("transfer_syntax", LITTLE_ENDIAN)
    def test_other_vrs_written_by_pydicom(self, transfer_syntax: UID) -> None:
        ds = study_identifier()
        ds.Rows = 512
        item = Dataset()
        item.CodeValue = "T-D3000"
        ds.AnatomicRegionSequence = [item]

        assert encode_identifier(ds, transfer_syntax) == pydicom_bytes(ds, transfer_syntax)

    @pytest.mark.parametrize(
        "transfer_syntax",
        [
            pytest.param(ExplicitVRBigEndian, id="big_endian"),
            pytest.param(DeflatedExplicitVRLittleEndian, id="deflated"),
        ],
    )
    def test_other_transfer_syntaxes(self, transfer_syntax: UID) -> None:
        ds = study_identifier()

        assert encode_identifier(ds, transfer_syntax) == pydicom_bytes(ds, transfer_syntax)

    @pytest.mark.parametrize("transfer_syntax", LITTLE_ENDIAN)
    def test_unencodable_returns_none(self, transfer_syntax: UID) -> None:
        ds = study_identifier()
        ds.add(DataElement(0x00081030, "LO", 5, already_converted=True))  # not a string

        assert encode_identifier(ds, transfer_syntax) is None


@pytest.mark.parametrize("transfer_syntax", LITTLE_ENDIAN)
@pytest.mark.parametrize(
    "bundled",
    bundled_files(PYDICOM_TEST_FILES) + bundled_files(PYDICOM_CHARSET_FILES),
    ids=lambda bundled: bundled.name,
)
def test_bundled_file_strings(transfer_syntax: UID, bundled: Any) -> None:
    ds = string_elements_of(bundled.path)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the non-conformant values
        expected = pydicom_bytes(ds, transfer_syntax)
        assert encode_identifier(ds, transfer_syntax) == expected


def return_keys(*keywords: str) -> list[ReturnKey]:
    return [ReturnKey(tag_for_keyword(word) or 0, word, dictionary_VR(word)) for word in keywords]


STUDY_KEYS = return_keys(
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyInstanceUID",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
)


def study_record(**overrides: list[str]) -> dict[str, list[str]]:
    return {
        "PatientName": ["DOE^JOHN"],
        "PatientID": ["P0000123"],
        "StudyDate": ["20200101"],
        "StudyInstanceUID": ["1.2.826.0.1.3680043.10.1.1826"],
        "AccessionNumber": [],
        "StudyDescription": ["CT chest"],
        "ModalitiesInStudy": ["CT", "MR"],
        "NumberOfStudyRelatedInstances": ["20"],
        **overrides,
    }


def build_both(
    record: dict[str, list[str]],
    keys: list[ReturnKey],
    charset: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Dataset, Dataset]:
    """Build an Identifier as encoded elements where possible, and as DataElements."""
    result = SearchResult(Level.STUDY, record, {}, {Level.STUDY: 1})
    ours = build_identifier(result, keys, "STUDY", "DICOMVAULT", charset)
    with monkeypatch.context() as patch:
        patch.setattr(identifiers, "_ascii_identifier", lambda *args: None)
        theirs = build_identifier(result, keys, "STUDY", "DICOMVAULT", charset)
    return ours, theirs


class TestBuildIdentifier:
    @pytest.mark.parametrize(
        ("overrides", "charset"),
        [
            pytest.param({}, [], id="default_repertoire"),
            pytest.param({}, ["ISO_IR 100"], id="latin1_requested"),
            pytest.param({}, ["", "ISO 2022 IR 87"], id="iso2022_requested"),
            pytest.param({"PatientName": ["DOE^JOHN^^"]}, [], id="empty_components"),
            pytest.param({"StudyDescription": ["CT  "]}, [], id="trailing_spaces"),
            pytest.param({"ModalitiesInStudy": []}, [], id="no_modalities"),
            pytest.param({"NumberOfStudyRelatedInstances": ["007"]}, [], id="leading_zeros"),
        ],
    )
    def test_encoded_elements_same_as_data_elements(
        self,
        overrides: dict[str, list[str]],
        charset: list[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        ours, theirs = build_both(study_record(**overrides), STUDY_KEYS, charset, monkeypatch)

        assert all(isinstance(element, RawDataElement) for element in ours.elements())
        for syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
            assert encode_identifier(ours, syntax) == encode_identifier(theirs, syntax)
        assert ours.PatientID == "P0000123"  # pydicom decodes an element when it is read

    @pytest.mark.parametrize(
        "overrides",
        [
            pytest.param({"PatientName": ["Müller^Jürgen"]}, id="non_ascii"),
            pytest.param({"PatientName": ["DOE^JOHN=="]}, id="empty_groups"),
            pytest.param({"NumberOfStudyRelatedInstances": [" 20"]}, id="spaced_number"),
            pytest.param({"StudyDescription": ["\x1b$B"]}, id="escape"),
        ],
    )
    def test_declined_values_built_as_data_elements(
        self, overrides: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        ours, theirs = build_both(study_record(**overrides), STUDY_KEYS, [], monkeypatch)

        assert not any(isinstance(element, RawDataElement) for element in ours.elements())
        assert pydicom_bytes(ours, ExplicitVRLittleEndian) == pydicom_bytes(
            theirs, ExplicitVRLittleEndian
        )

    def test_decimal_string_same_as_data_element(self, monkeypatch: pytest.MonkeyPatch) -> None:
        keys = return_keys("PatientName", "PatientWeight")
        for weight in ("70", "70.50", "7e1", "-1"):
            record = {"PatientName": ["DOE^JOHN"], "PatientWeight": [weight]}
            ours, theirs = build_both(record, keys, [], monkeypatch)

            assert encode_identifier(ours, ExplicitVRLittleEndian) == encode_identifier(
                theirs, ExplicitVRLittleEndian
            )

    def test_sequence_key_built_as_data_elements(self, monkeypatch: pytest.MonkeyPatch) -> None:
        keys = [*STUDY_KEYS, *return_keys("ProcedureCodeSequence")]
        ours, theirs = build_both(study_record(), keys, [], monkeypatch)

        assert ours.ProcedureCodeSequence == []
        assert pydicom_bytes(ours, ExplicitVRLittleEndian) == pydicom_bytes(
            theirs, ExplicitVRLittleEndian
        )
