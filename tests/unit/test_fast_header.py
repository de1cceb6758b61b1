"""Unit tests for the fast header reader: it must equal the pydicom-based path or step aside."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicomvault.dicom.attributes import COLUMN_ATTRIBUTES
from dicomvault.dicom.encoded_json import EncodedJSON
from dicomvault.dicom.fast_header import describe_encoded, read_encoded
from dicomvault.dicom.header import (
    InvalidDatasetError,
    column_value,
    describe_instance,
    header_to_json,
    read_header,
)
from dicomvault.dicom.part10 import split_part10
from tests.support.corpus import PYDICOM_CHARSET_FILES, PYDICOM_TEST_FILES
from tests.support.datasets import add_raw_element, encode_dataset, file_dataset, make_instance


def part10_files() -> list[Path]:
    """List the bundled pydicom files that have File Meta Information."""
    files = []
    for folder in (PYDICOM_TEST_FILES, PYDICOM_CHARSET_FILES):
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            try:
                split_part10(path.read_bytes())
            except InvalidDatasetError:
                continue
            files.append(path)
    return files


PART10_FILES = part10_files()


def dataset_of(path: Path) -> tuple[bytes, str]:
    """Return a file's encoded dataset and its transfer syntax."""
    data = path.read_bytes()
    part10 = split_part10(data)
    return data[part10.dataset_offset :], part10.transfer_syntax_uid


def reference(dataset: bytes, syntax: str) -> tuple[str, dict[str, str], str] | str:
    """Return the pydicom-based path's JSON text, column values and character set, or its error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # several bundled files are non-conformant on purpose
        try:
            ds = read_header(dataset, syntax)
        except InvalidDatasetError as exc:
            return str(exc)
        text = json.dumps(header_to_json(ds))
        values = {attribute.keyword: column_value(ds, attribute) for attribute in COLUMN_ATTRIBUTES}
    charset = ds.get("SpecificCharacterSet", "")
    if not isinstance(charset, str):
        charset = "\\".join(charset)
    return text, values, charset


def check_same(dataset: bytes, syntax: str) -> bool:
    """Assert that the fast path gives the pydicom-based result; return whether it applied."""
    expected = reference(dataset, syntax)
    try:
        fast = read_encoded(dataset, syntax)
    except InvalidDatasetError as exc:
        assert str(exc) == expected
        return True
    if fast is None:
        return False
    assert not isinstance(expected, str), f"the pydicom-based path failed: {expected}"
    text, values, charset = expected
    assert json.loads(fast.header_json) == json.loads(text)  # a readable diff first
    assert fast.header_json == text
    assert fast.values == values
    assert fast.specific_character_set == charset
    return True


def encoded(ds: Dataset, syntax: str) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the values are non-conformant on purpose
        return encode_dataset(ds, syntax)


class TestBundledFiles:
    @pytest.mark.parametrize(
        "path", PART10_FILES, ids=[f"{p.parent.name}/{p.name}" for p in PART10_FILES]
    )
    def test_same_as_pydicom_path(self, path: Path) -> None:
        check_same(*dataset_of(path))

    def test_most_take_fast_path(self) -> None:
        # Guards the test above against passing because every file falls back.
        handled = [path.name for path in PART10_FILES if check_same(*dataset_of(path))]
        assert len(handled) >= 0.7 * len(PART10_FILES)
        assert "CT_small.dcm" in handled
        assert "MR_small.dcm" in handled
        assert "chrFren.dcm" in handled  # ISO_IR 100

    @pytest.mark.parametrize(
        "name",
        [
            "MR_small_bigendian.dcm",  # big endian
            "image_dfl.dcm",  # deflate
            "priv_SQ.dcm",  # implicit VR private sequence
            "UN_sequence.dcm",  # UN value representation
        ],
    )
    def test_falls_back(self, name: str) -> None:
        assert read_encoded(*dataset_of(PYDICOM_TEST_FILES / name)) is None

    @pytest.mark.parametrize("name", ["chrH31.dcm", "chrRuss.dcm", "chrSQEncoding.dcm"])
    def test_falls_back_for_charset(self, name: str) -> None:
        assert read_encoded(*dataset_of(PYDICOM_CHARSET_FILES / name)) is None


# Values the fast path converts itself, each checked in both little endian syntaxes.
EDGE_VALUES: list[Any] = [
    pytest.param({"ImageType": "ORIGINAL\\PRIMARY\\"}, id="cs_empty_last_value"),
    pytest.param({"ImageType": "A \\B"}, id="cs_inner_space"),
    pytest.param({"StudyDescription": ""}, id="lo_empty"),
    pytest.param({"StudyDescription": " lead\\trail "}, id="lo_multiple"),
    pytest.param({"ImageComments": "line 1\r\nline 2 \\ not a delimiter"}, id="lt"),
    pytest.param({"SliceThickness": "1.0"}, id="ds"),
    pytest.param({"PixelSpacing": "0.5\\.5"}, id="ds_multiple"),
    pytest.param({"SliceThickness": " 1e3 "}, id="ds_exponent_spaces"),
    pytest.param({"SliceThickness": "   "}, id="ds_blank"),
    pytest.param({"SliceThickness": "-0.50"}, id="ds_negative"),
    pytest.param({"InstanceNumber": "007"}, id="is_leading_zeros"),
    pytest.param({"InstanceNumber": " 12 "}, id="is_spaces"),
    pytest.param({"InstanceNumber": "1.0"}, id="is_decimal"),
    pytest.param({"InstanceNumber": "  "}, id="is_blank"),
    pytest.param({"ReferencedFrameNumber": "1\\2\\3"}, id="is_multiple"),
    pytest.param({"PatientName": "Doe^John="}, id="pn_trailing_group"),
    pytest.param({"PatientName": "Doe^John==DOE^JOHN"}, id="pn_phonetic"),
    pytest.param({"PatientName": "=Ideographic"}, id="pn_ideographic_only"),
    pytest.param({"PatientName": "A=B=C=D"}, id="pn_four_groups"),
    pytest.param({"OtherPatientNames": "A^B\\C^D"}, id="pn_multiple"),
    pytest.param({"OtherPatientNames": "A^B\\"}, id="pn_multiple_empty"),
    pytest.param({"PatientName": "=="}, id="pn_only_delimiters"),
    pytest.param({"RetrieveAETitle": " AE1 \\AE2"}, id="ae"),
    pytest.param({"RetrieveURL": "http://example.invalid/a "}, id="ur"),
    pytest.param({"FrameIncrementPointer": 0x00181063}, id="at"),
    pytest.param({"Rows": 512, "Columns": 256}, id="us"),
    pytest.param({"TagAngleSecondAxis": -45}, id="ss"),
    pytest.param({"SimpleFrameList": [1, 2, 70000]}, id="ul_multiple"),
    pytest.param({"ReferencePixelX0": -5}, id="sl"),
    pytest.param({"RecommendedDisplayFrameRateInFloat": 0.1}, id="fl"),
    pytest.param({"RealWorldValueSlope": 1.5e300}, id="fd"),
    pytest.param({"RealWorldValueSlope": float("nan")}, id="fd_nan"),
    pytest.param({"EncapsulatedDocument": b"\x00\x01\xff" * 10}, id="ob_inline"),
    pytest.param({"EncapsulatedDocument": bytes(2000)}, id="ob_bulk"),
    pytest.param({"EncapsulatedDocument": bytes(768)}, id="ob_threshold"),
    pytest.param({"StudyID": "ab\x00"}, id="sh_null_padding"),
]


def with_values(values: dict[str, Any], charset: str | None = "ISO_IR 100") -> Dataset:
    ds = make_instance(SpecificCharacterSet=charset)
    for keyword, value in values.items():
        add_raw_element(ds, keyword, value)
    return ds


class TestGeneratedValues:
    @pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    @pytest.mark.parametrize("values", EDGE_VALUES)
    def test_same_as_pydicom_path(self, values: dict[str, Any], syntax: str) -> None:
        check_same(encoded(with_values(values), syntax), syntax)

    @pytest.mark.parametrize(
        ("charset", "name"),
        [
            pytest.param(None, "Müller^Jürgen", id="default"),
            pytest.param("ISO_IR 100", "Müller^Jürgen", id="latin1"),
            pytest.param("ISO_IR 192", "Yamada^Tarou=山田^太郎=やまだ^たろう", id="utf8"),
        ],
    )
    def test_character_sets(self, charset: str | None, name: str) -> None:
        ds = make_instance(SpecificCharacterSet=charset, PatientName=name)
        ds.StudyDescription = name.split("=")[-1]
        data = encoded(ds, ExplicitVRLittleEndian)
        assert check_same(data, ExplicitVRLittleEndian)

    def test_invalid_decimal_string(self) -> None:
        data = encoded(with_values({"SliceThickness": "1.25"}), ExplicitVRLittleEndian)
        data = data.replace(b"1.25", b"1.2x")
        assert read_encoded(data, ExplicitVRLittleEndian) is None

    def test_invalid_utf8_falls_back(self) -> None:
        ds = make_instance(SpecificCharacterSet="ISO_IR 192")
        data = encoded(ds, ExplicitVRLittleEndian).replace(b"Doe^John", b"Doe^J\xffhn")
        assert read_encoded(data, ExplicitVRLittleEndian) is None

    @pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    def test_nested_sequences(self, syntax: str) -> None:
        inner = Dataset()
        inner.CodeValue = "T-D3000"
        inner.CodeMeaning = "Chest"
        empty_item = Dataset()
        outer = Dataset()
        outer.AnatomicRegionSequence = Sequence([inner, empty_item])
        outer.ReferencedSOPInstanceUID = "1.2.3"
        ds = make_instance()
        ds.ReferencedImageSequence = Sequence([outer])
        ds.ProcedureCodeSequence = Sequence([])
        assert check_same(encoded(ds, syntax), syntax)

    def test_defined_length_sequence(self) -> None:
        # CT_small.dcm has sequences and items of defined length.
        assert check_same(*dataset_of(PYDICOM_TEST_FILES / "CT_small.dcm"))

    def test_big_endian_falls_back(self) -> None:
        data = encoded(make_instance(), ExplicitVRBigEndian)
        assert read_encoded(data, ExplicitVRBigEndian) is None

    def test_deflate_falls_back(self) -> None:
        data = encoded(make_instance(), ExplicitVRLittleEndian)
        assert read_encoded(data, DeflatedExplicitVRLittleEndian) is None

    def test_unknown_syntax_falls_back(self) -> None:
        data = encoded(make_instance(), ExplicitVRLittleEndian)
        assert read_encoded(data, "1.2.3.4") is None


class TestTruncated:
    @pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm"])
    def test_every_cut_same_as_pydicom_path(self, name: str) -> None:
        dataset, syntax = dataset_of(PYDICOM_TEST_FILES / name)
        for cut in range(0, len(dataset), 7):
            check_same(dataset[:cut], syntax)

    def test_truncated_value_falls_back(self) -> None:
        data = file_dataset(PYDICOM_TEST_FILES / "MR_small.dcm")
        cut = data.index(b"Uncompressed") + 5
        assert read_encoded(data[:cut], ExplicitVRLittleEndian) is None

    def test_truncated_pixel_data(self) -> None:
        data = file_dataset(PYDICOM_TEST_FILES / "MR_small.dcm")
        pixel_header = bytes.fromhex("e07f10004f57000000200000")
        value_start = data.index(pixel_header) + len(pixel_header)
        with pytest.raises(InvalidDatasetError) as excinfo:
            read_encoded(data[: value_start + 8092], ExplicitVRLittleEndian)
        assert str(excinfo.value) == (
            "The dataset is truncated: Pixel Data declares 8192 bytes but 8092 follow"
        )


class TestDescribeEncoded:
    def test_same_as_describe_instance(self) -> None:
        ds = make_instance(PatientName="Roe^Jane", StudyDescription="Chest")
        data = encoded(ds, ExplicitVRLittleEndian)
        expected = describe_instance(
            read_header(data, ExplicitVRLittleEndian), ExplicitVRLittleEndian
        )
        expected = dataclasses.replace(
            expected, header_json=EncodedJSON(json.dumps(expected.header_json))
        )
        assert describe_encoded(data, ExplicitVRLittleEndian) == expected

    @pytest.mark.parametrize(
        "keyword", ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]
    )
    def test_missing_uid_falls_back(self, keyword: str) -> None:
        data = encoded(make_instance(**{keyword: None}), ExplicitVRLittleEndian)
        assert describe_encoded(data, ExplicitVRLittleEndian) is None

    def test_multiple_uids_fall_back(self) -> None:
        ds = make_instance()
        add_raw_element(ds, "StudyInstanceUID", "1.2.3\\1.2.4")
        data = encoded(ds, ExplicitVRLittleEndian)
        assert describe_encoded(data, ExplicitVRLittleEndian) is None
