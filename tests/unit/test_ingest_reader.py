"""Unit tests for reading the header of a file or bucket object, and the Part 10 split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from dicomvault.config import StorageSettings
from dicomvault.dicom.encoded_json import EncodedJSON
from dicomvault.dicom.header import InvalidDatasetError
from dicomvault.dicom.part10 import NotDicomFileError, split_part10
from dicomvault.ingest.bucket import object_url
from dicomvault.ingest.jobs import FileJob, Mode, ReadOptions
from dicomvault.ingest.reader import DICOMDIR_REASON, Outcome, read_file, read_files
from dicomvault.storage.in_place import in_place_key
from tests.support.corpus import PYDICOM_TEST_FILES, dataset_offset, write_instance
from tests.support.datasets import make_instance
from tests.support.moto import MotoServer, source_settings


def job_for(path: Path) -> FileJob:
    status = path.stat()
    return FileJob(str(path), status.st_size, status.st_mtime_ns)


def read_in_place(path: Path, storage: Path) -> object:
    return read_file(job_for(path), ReadOptions(Mode.IN_PLACE, str(storage)))


class TestSplitPart10:
    def test_dataset_offset(self) -> None:
        data = (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()

        part10 = split_part10(data)

        assert part10.dataset_offset == dataset_offset(data)
        assert part10.transfer_syntax_uid == ExplicitVRLittleEndian
        assert part10.media_storage_sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"

    def test_without_preamble(self) -> None:
        data = (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()

        part10 = split_part10(data[128:])

        assert part10.dataset_offset == dataset_offset(data) - 128

    def test_text_not_dicom(self) -> None:
        with pytest.raises(NotDicomFileError) as excinfo:
            split_part10(b"hello, this is a text file" * 10)

        assert str(excinfo.value) == (
            "Not a DICOM file: no 'DICM' prefix after a 128-byte preamble (PS3.10 7.1)"
        )

    def test_bare_dataset(self) -> None:
        with pytest.raises(NotDicomFileError, match=r"^No File Meta Information"):
            split_part10((PYDICOM_TEST_FILES / "ExplVR_BigEndNoMeta.dcm").read_bytes())

    def test_no_transfer_syntax(self) -> None:
        with pytest.raises(InvalidDatasetError) as excinfo:
            split_part10((PYDICOM_TEST_FILES / "meta_missing_tsyntax.dcm").read_bytes())

        assert str(excinfo.value) == (
            "The File Meta Information has no Transfer Syntax UID (0002,0010), so the "
            "dataset's encoding is unknown"
        )

    def test_truncated_meta(self) -> None:
        data = (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()

        with pytest.raises(InvalidDatasetError, match="File Meta Information is truncated"):
            split_part10(data[: dataset_offset(data) - 5])


class TestReadFile:
    def test_in_place_instance(self, tmp_path: Path) -> None:
        path = PYDICOM_TEST_FILES / "CT_small.dcm"

        result = read_in_place(path, tmp_path)

        assert result.outcome is Outcome.INSTANCE  # type: ignore[attr-defined]
        assert result.storage_key == in_place_key(path)  # type: ignore[attr-defined]
        assert result.size == path.stat().st_size  # type: ignore[attr-defined]
        header = result.header  # type: ignore[attr-defined]
        reference = pydicom.dcmread(path, stop_before_pixels=True)
        assert header.sop_instance_uid == reference.SOPInstanceUID
        assert isinstance(header.header_json, EncodedJSON)
        assert json.loads(header.header_json)["00100010"]["vr"] == "PN"

    def test_in_place_records_sha256_of_file(self, tmp_path: Path) -> None:
        path = PYDICOM_TEST_FILES / "CT_small.dcm"

        result = read_in_place(path, tmp_path)

        expected = hashlib.sha256(path.read_bytes()).hexdigest()
        assert result.sha256 == expected  # type: ignore[attr-defined]

    def test_import_records_sha256_of_copy(self, tmp_path: Path) -> None:
        source = PYDICOM_TEST_FILES / "MR_small.dcm"

        result = read_file(job_for(source), ReadOptions(Mode.IMPORT, str(tmp_path)))

        stored = (tmp_path / result.storage_key).read_bytes()
        assert result.sha256 == hashlib.sha256(stored).hexdigest()

    def test_import_copies_dataset(self, tmp_path: Path) -> None:
        source = PYDICOM_TEST_FILES / "MR_small.dcm"
        before = source.read_bytes()

        result = read_file(job_for(source), ReadOptions(Mode.IMPORT, str(tmp_path)))

        assert result.outcome is Outcome.INSTANCE
        assert not result.storage_key.startswith("inplace:")
        stored = (tmp_path / result.storage_key).read_bytes()
        # The dataset is copied byte for byte after the archive's own File Meta Information.
        assert stored[dataset_offset(stored) :] == before[dataset_offset(before) :]
        assert source.read_bytes() == before

    @pytest.mark.parametrize(
        ("name", "reason"),
        [
            pytest.param(
                "MR_truncated.dcm",
                "The dataset is truncated: Pixel Data declares 8192 bytes but 8130 follow",
                id="truncated",
            ),
            pytest.param(
                "README.txt",
                "Not a DICOM file: no 'DICM' prefix after a 128-byte preamble (PS3.10 7.1)",
                id="text",
            ),
            pytest.param(
                "JPEGLSNearLossless_08.dcm",
                "No Study Instance UID (0020,000D); the archive needs the SOP Class, SOP "
                "Instance, Study Instance and Series Instance UIDs",
                id="no_study_uid",
            ),
        ],
    )
    def test_failed(self, name: str, reason: str, tmp_path: Path) -> None:
        result = read_in_place(PYDICOM_TEST_FILES / name, tmp_path)

        assert result.outcome is Outcome.FAILED  # type: ignore[attr-defined]
        assert result.reason == reason  # type: ignore[attr-defined]

    def test_dicomdir_ignored(self, tmp_path: Path) -> None:
        result = read_in_place(PYDICOM_TEST_FILES / "dicomdirtests" / "DICOMDIR", tmp_path)

        assert result.outcome is Outcome.IGNORED  # type: ignore[attr-defined]
        assert result.reason == DICOMDIR_REASON  # type: ignore[attr-defined]

    def test_empty_file(self, tmp_path: Path) -> None:
        path = tmp_path / "empty.dcm"
        path.write_bytes(b"")

        result = read_in_place(path, tmp_path)

        assert (result.outcome, result.reason) == (Outcome.FAILED, "Empty file")  # type: ignore[attr-defined]

    def test_missing_file(self, tmp_path: Path) -> None:
        job = FileJob(str(tmp_path / "gone.dcm"), 10, 0)

        result = read_file(job, ReadOptions(Mode.IN_PLACE, str(tmp_path)))

        assert result.outcome is Outcome.FAILED
        assert result.reason == "Cannot be read: No such file or directory"

    def test_changed_since_scan(self, tmp_path: Path) -> None:
        path = write_instance(tmp_path / "a.dcm", make_instance())
        job = job_for(path)
        with path.open("ab") as file:
            file.write(b"\x00\x00")

        result = read_file(job, ReadOptions(Mode.IN_PLACE, str(tmp_path)))

        assert result.outcome is Outcome.CHANGED


class TestReadObject:
    @pytest.fixture
    def bucket(self, moto_server: MotoServer) -> str:
        return moto_server.new_bucket()

    @pytest.fixture
    def source(self, moto_server: MotoServer, tmp_path: Path) -> StorageSettings:
        return source_settings(moto_server, tmp_path)

    def upload(self, moto_server: MotoServer, bucket: str, key: str, data: bytes) -> FileJob:
        """Upload ``data`` as ``key``; return the job a listing of it gives."""
        etag = moto_server.client().put_object(Bucket=bucket, Key=key, Body=data)["ETag"]
        return FileJob(object_url(bucket, key), len(data), 0, etag.strip('"'))

    def test_in_place_instance(
        self, moto_server: MotoServer, bucket: str, source: StorageSettings, tmp_path: Path
    ) -> None:
        path = PYDICOM_TEST_FILES / "CT_small.dcm"
        job = self.upload(moto_server, bucket, "2024/ct/CT_small.dcm", path.read_bytes())

        result = read_file(job, ReadOptions(Mode.IN_PLACE, str(tmp_path), source=source))

        assert result.outcome is Outcome.INSTANCE
        assert result.storage_key == f"inbucket:{bucket}/2024/ct/CT_small.dcm"
        assert result.size == path.stat().st_size
        assert result.header is not None
        reference = pydicom.dcmread(path, stop_before_pixels=True)
        assert result.header.sop_instance_uid == reference.SOPInstanceUID
        assert json.loads(result.header.header_json)["00100010"]["vr"] == "PN"
        assert list(tmp_path.rglob("*.dcm")) == []

    def test_import_copies_dataset(
        self, moto_server: MotoServer, bucket: str, source: StorageSettings, tmp_path: Path
    ) -> None:
        before = (PYDICOM_TEST_FILES / "MR_small.dcm").read_bytes()
        job = self.upload(moto_server, bucket, "MR_small.dcm", before)

        result = read_file(job, ReadOptions(Mode.IMPORT, str(tmp_path), source=source))

        assert result.outcome is Outcome.INSTANCE
        assert not result.storage_key.startswith(("inplace:", "inbucket:"))
        stored = (tmp_path / result.storage_key).read_bytes()
        assert stored[dataset_offset(stored) :] == before[dataset_offset(before) :]
        assert moto_server.object_names(bucket) == ["MR_small.dcm"]

    def test_changed_object(
        self, moto_server: MotoServer, bucket: str, source: StorageSettings, tmp_path: Path
    ) -> None:
        data = (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()
        job = self.upload(moto_server, bucket, "a.dcm", data)
        moto_server.client().put_object(Bucket=bucket, Key="a.dcm", Body=data[:-2] + b"\x01\x02")

        result = read_file(job, ReadOptions(Mode.IN_PLACE, str(tmp_path), source=source))

        assert result.outcome is Outcome.CHANGED
        assert result.reason == "The object changed while it was read"

    def test_size_differs_from_listing(
        self, moto_server: MotoServer, bucket: str, source: StorageSettings, tmp_path: Path
    ) -> None:
        job = self.upload(moto_server, bucket, "a.dcm", b"0123456789")

        result = read_file(job._replace(size=9), ReadOptions(Mode.IN_PLACE, "", source=source))

        assert result.outcome is Outcome.CHANGED
        assert result.reason == "The object changed while it was read"

    def test_deleted_object(
        self, moto_server: MotoServer, bucket: str, source: StorageSettings
    ) -> None:
        job = self.upload(moto_server, bucket, "a.dcm", b"0123456789")
        moto_server.client().delete_object(Bucket=bucket, Key="a.dcm")

        result = read_file(job, ReadOptions(Mode.IN_PLACE, "", source=source))

        assert result.outcome is Outcome.FAILED
        assert result.reason == "The object was deleted after the bucket was listed"
        assert result.retry

    def test_missing_bucket(self, moto_server: MotoServer, source: StorageSettings) -> None:
        job = FileJob("s3://no-such-bucket/a.dcm", 10, 0, "0" * 32)

        result = read_file(job, ReadOptions(Mode.IN_PLACE, "", source=source))

        assert result.outcome is Outcome.FAILED
        assert result.reason.startswith(
            "Cannot read s3://no-such-bucket/a.dcm: bucket no-such-bucket does not exist"
        )
        assert result.retry

    @pytest.mark.parametrize(
        ("name", "reason"),
        [
            pytest.param(
                "README.txt",
                "Not a DICOM file: no 'DICM' prefix after a 128-byte preamble (PS3.10 7.1)",
                id="text",
            ),
            pytest.param(
                "MR_truncated.dcm",
                "The dataset is truncated: Pixel Data declares 8192 bytes but 8130 follow",
                id="truncated",
            ),
        ],
    )
    def test_failed(
        self,
        moto_server: MotoServer,
        bucket: str,
        source: StorageSettings,
        name: str,
        reason: str,
    ) -> None:
        job = self.upload(moto_server, bucket, name, (PYDICOM_TEST_FILES / name).read_bytes())

        result = read_file(job, ReadOptions(Mode.IN_PLACE, "", source=source))

        assert result.outcome is Outcome.FAILED
        assert result.reason == reason
        assert not result.retry

    def test_dicomdir_ignored(
        self, moto_server: MotoServer, bucket: str, source: StorageSettings
    ) -> None:
        data = (PYDICOM_TEST_FILES / "dicomdirtests" / "DICOMDIR").read_bytes()
        job = self.upload(moto_server, bucket, "DICOMDIR", data)

        result = read_file(job, ReadOptions(Mode.IN_PLACE, "", source=source))

        assert result.outcome is Outcome.IGNORED
        assert result.reason == DICOMDIR_REASON

    def test_empty_object(
        self, moto_server: MotoServer, bucket: str, source: StorageSettings
    ) -> None:
        job = self.upload(moto_server, bucket, "empty.dcm", b"")

        result = read_file(job, ReadOptions(Mode.IN_PLACE, "", source=source))

        assert (result.outcome, result.reason) == (Outcome.FAILED, "Empty file")

    def test_without_source_settings(self, moto_server: MotoServer, bucket: str) -> None:
        job = self.upload(moto_server, bucket, "a.dcm", b"0123456789")

        [result] = read_files([job], ReadOptions(Mode.IN_PLACE, ""))

        assert result.outcome is Outcome.FAILED
        assert result.reason == (
            f"Unexpected error: Cannot read s3://{bucket}/a.dcm: the read options have no "
            "source settings for buckets"
        )
