"""The P-DATA-TF encoding of direct sends and the dataset offset of stored files."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pynetdicom.dsutils import split_dataset
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from dicomvault.dicom.header import encode_file_meta
from dicomvault.dimse.direct_send import BATCH_BYTES, _batches
from dicomvault.dimse.store_sender import (
    GROUP_LENGTH_ELEMENT,
    SendError,
    _dataset_offset_in,
    dataset_offset,
)
from tests.support.corpus import PYDICOM_TEST_FILES


def primitive(context_id: int, value: bytes) -> P_DATA:
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, value))
    return pdata


def pynetdicom_encoding(pdata: P_DATA) -> bytes:
    pdu = P_DATA_TF()
    pdu.from_primitive(pdata)
    return bytes(pdu.encode())


class TestBatches:
    def test_same_bytes_as_pynetdicom(self) -> None:
        primitives = [primitive(1, b"\x03" + b"c" * 90), primitive(3, b"\x02" + b"d" * 16378)]
        expected = b"".join(pynetdicom_encoding(p) for p in primitives)

        assert b"".join(_batches(iter(primitives))) == expected

    def test_large_message_written_in_bounded_batches(self) -> None:
        fragment = b"\x00" + bytes(16378)
        primitives = [primitive(1, fragment) for _ in range(64)]

        batches = list(_batches(iter(primitives)))

        assert len(batches) > 1
        assert all(len(batch) < BATCH_BYTES + len(fragment) + 12 for batch in batches)
        assert b"".join(batches) == b"".join(pynetdicom_encoding(p) for p in primitives)


class TestDatasetOffset:
    def test_file_written_by_the_archive(self, tmp_path: Path) -> None:
        path = tmp_path / "stored.dcm"
        meta = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1")
        path.write_bytes(meta + b"\x08\x00\x16\x00UI\x00\x00")

        assert dataset_offset(path) == len(meta) == split_dataset(path)[1]

    @pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm"])
    def test_other_files_parsed(self, name: str) -> None:
        path = PYDICOM_TEST_FILES / name

        assert dataset_offset(path) == split_dataset(path)[1]

    def test_file_without_meta_refused(self) -> None:
        path = PYDICOM_TEST_FILES / "no_meta.dcm"

        with pytest.raises(SendError, match="no DICOM file meta information"):
            dataset_offset(path)

    def test_stream_without_group_length_parsed(self) -> None:
        # Objects indexed in place in a bucket have no path, only a stream.
        data = (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()
        assert data[132:140] == GROUP_LENGTH_ELEMENT
        without = data[:132] + data[144:]

        offset = _dataset_offset_in(io.BytesIO(without), None)

        assert offset == split_dataset(PYDICOM_TEST_FILES / "CT_small.dcm")[1] - 12
        assert without[offset:] == data[offset + 12 :]

    def test_stream_without_meta_refused(self) -> None:
        stream = io.BytesIO((PYDICOM_TEST_FILES / "no_meta.dcm").read_bytes())

        with pytest.raises(SendError, match="no DICOM file meta information"):
            _dataset_offset_in(stream, None)
