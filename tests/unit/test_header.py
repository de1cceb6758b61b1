"""Unit tests for reading received datasets and describing them for the index."""

from __future__ import annotations

import io
import struct

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
)

from dicomvault.dicom.attributes import Level
from dicomvault.dicom.header import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    InvalidDatasetError,
    MissingAttributeError,
    describe_instance,
    encode_file_meta,
    read_header,
)
from tests.support.corpus import PYDICOM_CHARSET_FILES, PYDICOM_TEST_FILES, dataset_offset
from tests.support.datasets import add_raw_element, encode_dataset, file_dataset, make_instance

PIXEL_DATA = "7FE00010"
# Tag, VR and 32-bit length of the 8192-byte Pixel Data of MR_small.dcm.
PIXEL_DATA_HEADER = bytes.fromhex("e07f10004f57000000200000")

# One pydicom test file per transfer syntax, named by the syntax in the test id.
TRANSFER_SYNTAX_FILES = [
    pytest.param("MR_small_implicit.dcm", ImplicitVRLittleEndian, id="implicit_le"),
    pytest.param("MR_small.dcm", ExplicitVRLittleEndian, id="explicit_le"),
    pytest.param("MR_small_bigendian.dcm", ExplicitVRBigEndian, id="explicit_be"),
    pytest.param("image_dfl.dcm", DeflatedExplicitVRLittleEndian, id="deflate"),
    pytest.param("SC_rgb_jpeg_dcmtk.dcm", JPEGBaseline8Bit, id="jpeg_baseline"),
    pytest.param("JPEG-lossy.dcm", JPEGExtended12Bit, id="jpeg_extended"),
    pytest.param("MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless, id="jpeg_ls"),
    pytest.param("MR_small_jp2klossless.dcm", JPEG2000Lossless, id="j2k_lossless"),
    pytest.param("JPEG2000.dcm", JPEG2000, id="j2k"),
    pytest.param("MR_small_RLE.dcm", RLELossless, id="rle"),
]


def reference_header(name: str) -> pydicom.FileDataset:
    """Read a pydicom test file up to its pixel data with pydicom itself."""
    return pydicom.dcmread(PYDICOM_TEST_FILES / name, stop_before_pixels=True)


def with_pixel_data(ds: Dataset) -> Dataset:
    """Add a 4 by 4, 8-bit monochrome image to ``ds``."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 4
    ds.Columns = 4
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(16))
    return ds


class TestReadHeader:
    @pytest.mark.parametrize(("name", "syntax"), TRANSFER_SYNTAX_FILES)
    def test_file_meta_syntax(self, name: str, syntax: UID) -> None:
        # Guards the parametrization: each file is in the syntax its id names.
        assert reference_header(name).file_meta.TransferSyntaxUID == syntax

    @pytest.mark.parametrize(("name", "syntax"), TRANSFER_SYNTAX_FILES)
    def test_same_as_pydicom(self, name: str, syntax: UID) -> None:
        ds = read_header(file_dataset(PYDICOM_TEST_FILES / name), syntax)
        assert ds == reference_header(name)

    @pytest.mark.parametrize(("name", "syntax"), TRANSFER_SYNTAX_FILES)
    def test_stops_before_pixel_data(self, name: str, syntax: UID) -> None:
        ds = read_header(file_dataset(PYDICOM_TEST_FILES / name), syntax)
        assert "PixelData" not in ds

    @pytest.mark.parametrize(("name", "syntax"), TRANSFER_SYNTAX_FILES)
    def test_sop_instance_uid(self, name: str, syntax: UID) -> None:
        ds = read_header(file_dataset(PYDICOM_TEST_FILES / name), syntax)
        assert ds.SOPInstanceUID == reference_header(name).SOPInstanceUID

    def test_japanese_names_decoded(self) -> None:
        ds = read_header(file_dataset(PYDICOM_CHARSET_FILES / "chrH31.dcm"), ExplicitVRLittleEndian)
        assert str(ds.PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"

    def test_generated_instance(self) -> None:
        ds = make_instance(PatientName="Roe^Jane")
        header = read_header(encode_dataset(ds, ImplicitVRLittleEndian), ImplicitVRLittleEndian)
        assert str(header.PatientName) == "Roe^Jane"


class TestInvalidDatasets:
    def test_truncated_in_value(self) -> None:
        data = file_dataset(PYDICOM_TEST_FILES / "MR_small.dcm")
        # Cut inside the text of Image Comments (0020,4000), "Uncompressed".
        cut = data.index(b"Uncompressed") + 5
        with pytest.raises(InvalidDatasetError):
            read_header(data[:cut], ExplicitVRLittleEndian)

    def test_truncated_in_element_header(self) -> None:
        data = file_dataset(PYDICOM_TEST_FILES / "MR_small.dcm")
        # Cut 4 bytes into the element that follows Image Comments.
        cut = data.index(b"Uncompressed") + len(b"Uncompressed") + 4
        with pytest.raises(InvalidDatasetError):
            read_header(data[:cut], ExplicitVRLittleEndian)

    def test_truncated_pixel_data(self) -> None:
        data = file_dataset(PYDICOM_TEST_FILES / "MR_small.dcm")
        value_start = data.index(PIXEL_DATA_HEADER) + len(PIXEL_DATA_HEADER)
        with pytest.raises(InvalidDatasetError) as excinfo:
            read_header(data[: value_start + 8092], ExplicitVRLittleEndian)
        assert str(excinfo.value) == (
            "The dataset is truncated: Pixel Data declares 8192 bytes but 8092 follow"
        )

    def test_truncated_after_pixel_data(self) -> None:
        # MR_small.dcm ends with Data Set Trailing Padding (FFFC,FFFC) after Pixel Data.
        data = file_dataset(PYDICOM_TEST_FILES / "MR_small.dcm")
        with pytest.raises(InvalidDatasetError):
            read_header(data[:-10], ExplicitVRLittleEndian)

    def test_truncated_encapsulated_pixel_data(self) -> None:
        data = file_dataset(PYDICOM_TEST_FILES / "JPEG2000.dcm")
        with pytest.raises(InvalidDatasetError) as excinfo:
            read_header(data[:-100], JPEG2000)
        assert str(excinfo.value) == (
            "The dataset is truncated: encapsulated Pixel Data has no sequence delimiter"
        )

    def test_empty(self) -> None:
        with pytest.raises(InvalidDatasetError) as excinfo:
            read_header(b"", ExplicitVRLittleEndian)
        assert str(excinfo.value) == "The dataset is empty"

    def test_deflate_garbage(self) -> None:
        with pytest.raises(
            InvalidDatasetError, match=r"^The deflated dataset cannot be inflated: "
        ):
            read_header(b"\xff" * 64, DeflatedExplicitVRLittleEndian)

    def test_deflate_truncated(self) -> None:
        data = file_dataset(PYDICOM_TEST_FILES / "image_dfl.dcm")
        with pytest.raises(InvalidDatasetError):
            read_header(data[: len(data) // 2], DeflatedExplicitVRLittleEndian)

    @pytest.mark.parametrize(
        "uid",
        [
            pytest.param("1.2.3.4", id="unknown"),
            pytest.param(MRImageStorage, id="sop_class"),
        ],
    )
    def test_not_a_transfer_syntax(self, uid: str) -> None:
        data = file_dataset(PYDICOM_TEST_FILES / "MR_small.dcm")
        with pytest.raises(InvalidDatasetError) as excinfo:
            read_header(data, uid)
        assert str(excinfo.value) == f"Unknown transfer syntax {uid}"


class TestMissingAttributes:
    @pytest.mark.parametrize(
        ("keyword", "name", "tag"),
        [
            pytest.param("SOPClassUID", "SOP Class UID", "(0008,0016)", id="sop_class"),
            pytest.param("SOPInstanceUID", "SOP Instance UID", "(0008,0018)", id="sop_instance"),
            pytest.param("StudyInstanceUID", "Study Instance UID", "(0020,000D)", id="study"),
            pytest.param("SeriesInstanceUID", "Series Instance UID", "(0020,000E)", id="series"),
        ],
    )
    @pytest.mark.parametrize("value", [None, ""], ids=["absent", "empty"])
    def test_uid(self, keyword: str, name: str, tag: str, value: str | None) -> None:
        data = encode_dataset(make_instance(**{keyword: value}))
        ds = read_header(data, ExplicitVRLittleEndian)
        with pytest.raises(MissingAttributeError) as excinfo:
            describe_instance(ds, ExplicitVRLittleEndian)
        assert str(excinfo.value) == f"The dataset has no {name} {tag}; the sender must include it"

    def test_is_invalid_dataset(self) -> None:
        assert issubclass(MissingAttributeError, InvalidDatasetError)


class TestDescribeInstance:
    def describe(self, ds: Dataset) -> dict[str, str]:
        data = encode_dataset(ds)
        return describe_instance(
            read_header(data, ExplicitVRLittleEndian), ExplicitVRLittleEndian
        ).values

    def test_uids(self) -> None:
        ds = make_instance()
        header = describe_instance(ds, ImplicitVRLittleEndian)
        assert header.sop_class_uid == MRImageStorage
        assert header.sop_instance_uid == ds.SOPInstanceUID
        assert header.study_instance_uid == ds.StudyInstanceUID
        assert header.series_instance_uid == ds.SeriesInstanceUID
        assert header.transfer_syntax_uid == ImplicitVRLittleEndian

    @pytest.mark.parametrize(
        ("keyword", "value", "expected"),
        [
            pytest.param("PatientName", "Doe^John", "Doe^John", id="person_name"),
            pytest.param("PatientID", "PAT-1", "PAT-1", id="patient_id"),
            pytest.param("StudyDate", "20240115", "20240115", id="date"),
            pytest.param("StudyTime", "101500", "101500", id="time"),
            pytest.param("InstanceNumber", 7, "7", id="integer_string"),
            pytest.param("Modality", "MR", "MR", id="code_string"),
            pytest.param("PatientSex", "", "", id="empty"),
            pytest.param("PatientSex", None, "", id="absent"),
        ],
    )
    def test_column_value(self, keyword: str, value: object, expected: str) -> None:
        values = self.describe(make_instance(**{keyword: value}))
        assert values[keyword] == expected

    def test_multiple_values_joined(self) -> None:
        ds = make_instance()
        add_raw_element(ds, "Modality", ["MR", "PR"])
        assert describe_instance(ds, ExplicitVRLittleEndian).values["Modality"] == "MR\\PR"

    def test_every_column_present(self) -> None:
        values = self.describe(make_instance())
        assert "AcquisitionDateTime" in values
        assert values["AcquisitionDateTime"] == ""

    def test_level_values(self) -> None:
        header = describe_instance(make_instance(AccessionNumber="A-17"), ExplicitVRLittleEndian)
        study = header.level_values(Level.STUDY)
        assert study["accession_number"] == "A-17"
        assert study["study_date"] == "20240115"
        assert "patient_name" not in study

    def test_character_set_joined(self) -> None:
        data = file_dataset(PYDICOM_CHARSET_FILES / "chrH31.dcm")
        header = describe_instance(
            read_header(data, ExplicitVRLittleEndian), ExplicitVRLittleEndian
        )
        assert header.specific_character_set == "\\ISO 2022 IR 87"

    def test_japanese_name_value(self) -> None:
        data = file_dataset(PYDICOM_CHARSET_FILES / "chrH31.dcm")
        header = describe_instance(
            read_header(data, ExplicitVRLittleEndian), ExplicitVRLittleEndian
        )
        assert header.values["PatientName"] == "Yamada^Tarou=山田^太郎=やまだ^たろう"


class TestHeaderJson:
    def header_json(self, ds: Dataset) -> dict[str, object]:
        data = encode_dataset(ds)
        header = describe_instance(
            read_header(data, ExplicitVRLittleEndian), ExplicitVRLittleEndian
        )
        return header.header_json

    @pytest.mark.parametrize(("name", "syntax"), TRANSFER_SYNTAX_FILES)
    def test_no_pixel_data_in_files(self, name: str, syntax: UID) -> None:
        ds = read_header(file_dataset(PYDICOM_TEST_FILES / name), syntax)
        assert PIXEL_DATA not in describe_instance(ds, syntax).header_json

    def test_no_pixel_data(self) -> None:
        assert PIXEL_DATA not in self.header_json(with_pixel_data(make_instance()))

    def test_image_attributes_kept(self) -> None:
        header_json = self.header_json(with_pixel_data(make_instance()))
        assert header_json["00280010"] == {"vr": "US", "Value": [4]}

    def test_person_name(self) -> None:
        header_json = self.header_json(make_instance(PatientName="Doe^John"))
        assert header_json["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}

    def test_large_binary_as_bulk_data_uri(self) -> None:
        ds = make_instance()
        ds.ICCProfile = b"\x01" * 2000
        header_json = self.header_json(ds)
        assert header_json["00282000"] == {"vr": "OB", "BulkDataURI": "bulkdata/00282000"}

    def test_small_binary_inline(self) -> None:
        ds = make_instance()
        ds.ICCProfile = b"\x01\x02"
        header_json = self.header_json(ds)
        assert header_json["00282000"] == {"vr": "OB", "InlineBinary": "AQI="}

    def test_sequence(self) -> None:
        item = Dataset()
        item.CodeValue = "CT-CHEST"
        item.CodingSchemeDesignator = "LOCAL"
        ds = make_instance(ProcedureCodeSequence=[item])
        header_json = self.header_json(ds)
        assert header_json["00081032"] == {
            "vr": "SQ",
            "Value": [
                {
                    "00080100": {"vr": "SH", "Value": ["CT-CHEST"]},
                    "00080102": {"vr": "SH", "Value": ["LOCAL"]},
                }
            ],
        }


class TestEncodeFileMeta:
    def read_file(self, meta: bytes, data: bytes) -> pydicom.FileDataset:
        return pydicom.dcmread(io.BytesIO(meta + data))

    def test_readable_by_pydicom(self) -> None:
        ds = make_instance()
        data = encode_dataset(ds)
        meta = encode_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
        assert self.read_file(meta, data) == ds

    def test_implementation(self) -> None:
        ds = make_instance()
        meta = encode_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
        file_meta = self.read_file(meta, encode_dataset(ds)).file_meta
        assert file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        assert file_meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME

    def test_implementation_class_uid_valid(self) -> None:
        assert UID(IMPLEMENTATION_CLASS_UID).is_valid

    def test_uids(self) -> None:
        ds = make_instance()
        meta = encode_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ImplicitVRLittleEndian)
        file_meta = self.read_file(meta, encode_dataset(ds, ImplicitVRLittleEndian)).file_meta
        assert file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert file_meta.TransferSyntaxUID == ImplicitVRLittleEndian

    def test_source_ae_title(self) -> None:
        ds = make_instance()
        meta = encode_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian, "CT01")
        file_meta = self.read_file(meta, encode_dataset(ds)).file_meta
        assert file_meta.SourceApplicationEntityTitle == "CT01"

    def test_no_source_ae_title(self) -> None:
        ds = make_instance()
        meta = encode_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
        file_meta = self.read_file(meta, encode_dataset(ds)).file_meta
        assert "SourceApplicationEntityTitle" not in file_meta

    def test_preamble(self) -> None:
        meta = encode_file_meta(MRImageStorage, "1.2.3", ExplicitVRLittleEndian)
        assert meta[:132] == b"\x00" * 128 + b"DICM"

    def test_group_length(self) -> None:
        meta = encode_file_meta(MRImageStorage, "1.2.3", ExplicitVRLittleEndian)
        # (0002,0000) UL is the first element; its value counts the bytes after it.
        (group_length,) = struct.unpack_from("<I", meta, 132 + 8)
        assert group_length == len(meta) - 132 - 12

    @pytest.mark.parametrize(
        ("sop_instance_uid", "source_ae_title"),
        [("1.2.3", ""), ("1.2.34", "CT01"), ("1.2.3", "ODD"), ("1.2.34", "")],
    )
    def test_same_bytes_as_pydicom(self, sop_instance_uid: str, source_ae_title: str) -> None:
        meta = FileMetaDataset()
        meta.FileMetaInformationVersion = b"\x00\x01"
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_instance_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        if source_ae_title:
            meta.SourceApplicationEntityTitle = source_ae_title
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
        write_file_meta_info(buffer, meta, enforce_standard=True)

        encoded = encode_file_meta(
            MRImageStorage, sop_instance_uid, ExplicitVRLittleEndian, source_ae_title
        )

        assert encoded == b"\x00" * 128 + b"DICM" + buffer.getvalue()

    def test_meta_ends_where_dataset_starts(self) -> None:
        meta = encode_file_meta(MRImageStorage, "1.2.3", ExplicitVRLittleEndian)
        assert dataset_offset(meta + b"\x08\x00") == len(meta)
