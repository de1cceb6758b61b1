"""Unit tests for the archive service layer: store, replace, reject and roll back.

Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql.schema import Table

from dicomvault.archive import (
    Archive,
    DuplicateInstanceError,
    IndexUnavailableError,
    InstanceMismatchError,
    InvalidDatasetError,
    StorageFullError,
    StoreResult,
    StudyMismatchError,
)
from dicomvault.dicom.header import MissingAttributeError, encode_file_meta
from dicomvault.dicom.matching import parse_identifier
from dicomvault.events import InstanceRejected, InstanceStored
from dicomvault.index.schema import instances, patients, series, studies
from dicomvault.index.search import IndexSearch
from dicomvault.index.writer import IndexWriter
from dicomvault.storage.filesystem import FilesystemStorage
from dicomvault.storage.journal import WriteJournal
from tests.support.corpus import PYDICOM_TEST_FILES
from tests.support.datasets import encode_dataset, file_dataset, make_identifier, make_instance

INDEX_FAILURE = OperationalError(
    "INSERT INTO instances ...", {}, Exception("server closed the connection unexpectedly")
)


def store(archive: Archive, ds: Dataset, **options: Any) -> StoreResult:
    return archive.store(encode_dataset(ds), ExplicitVRLittleEndian, **options)


def stored_files(archive: Archive) -> list[str]:
    """List every file under the storage root, temporary ones included."""
    storage = archive.storage
    assert isinstance(storage, FilesystemStorage)
    root = storage.root
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def count_rows(engine: Engine, table: Table) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def column_values(engine: Engine, table: Table, column: str) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(select(table.c[column]).order_by(table.c.pk)).scalars())


def read_stored(archive: Archive, key: str) -> bytes:
    with archive.storage.open(key) as file:
        return file.read()


def recorded(archive: Archive, event_type: type) -> list[Any]:
    """Subscribe to ``event_type`` and return the list the events are appended to."""
    events: list[Any] = []
    archive.events.subscribe(event_type, events.append)
    return events


def fail_index(monkeypatch: pytest.MonkeyPatch) -> None:
    def add_instance(self: IndexWriter, *args: Any, **kwargs: Any) -> None:
        raise INDEX_FAILURE

    monkeypatch.setattr(IndexWriter, "add_instance", add_instance)


class TestStore:
    def test_result(self, archive: Archive) -> None:
        ds = make_instance()
        result = store(archive, ds)
        assert result.sop_instance_uid == ds.SOPInstanceUID
        assert result.replaced is False
        assert result.warnings == ()

    def test_result_uids(self, archive: Archive) -> None:
        ds = make_instance()
        result = store(archive, ds)
        assert result.sop_class_uid == ds.SOPClassUID
        assert result.study_instance_uid == ds.StudyInstanceUID
        assert result.series_instance_uid == ds.SeriesInstanceUID

    def test_file_is_meta_and_dataset(self, archive: Archive) -> None:
        ds = make_instance()
        data = encode_dataset(ds)
        result = archive.store(data, ExplicitVRLittleEndian, source_ae_title="CT01")
        meta = encode_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian, "CT01")
        assert read_stored(archive, result.storage_key) == meta + data

    def test_size(self, archive: Archive) -> None:
        result = store(archive, make_instance())
        assert result.size == len(read_stored(archive, result.storage_key))

    def test_one_file(self, archive: Archive) -> None:
        result = store(archive, make_instance())
        assert stored_files(archive) == [result.storage_key]

    def test_indexed(self, archive: Archive) -> None:
        ds = make_instance()
        result = store(archive, ds)
        query = parse_identifier(make_identifier("IMAGE", SOPInstanceUID=ds.SOPInstanceUID))
        matches = list(archive.search(query))
        assert [match.storage_key for match in matches] == [result.storage_key]

    def test_source_ae_title_indexed(self, archive: Archive) -> None:
        archive.store(
            encode_dataset(make_instance()), ExplicitVRLittleEndian, source_ae_title="MR7"
        )
        assert column_values(archive.engine, instances, "source_ae_title") == ["MR7"]

    def test_event(self, archive: Archive) -> None:
        events = recorded(archive, InstanceStored)
        ds = make_instance()
        result = archive.store(
            encode_dataset(ds), ExplicitVRLittleEndian, source_ae_title="CT01", service="C-STORE"
        )
        assert len(events) == 1
        assert 0 < events[0].duration < 60
        assert events == [
            InstanceStored(
                sop_instance_uid=ds.SOPInstanceUID,
                sop_class_uid=ds.SOPClassUID,
                study_instance_uid=ds.StudyInstanceUID,
                transfer_syntax_uid=ExplicitVRLittleEndian,
                size=result.size,
                source_ae_title="CT01",
                replaced=False,
                service="C-STORE",
                duration=events[0].duration,
            )
        ]

    def test_sop_class_mismatch_warned(self, archive: Archive) -> None:
        ds = make_instance()
        result = store(archive, ds, sop_class_uid=CTImageStorage)
        assert result.warnings == (
            f"the request's Affected SOP Class UID {CTImageStorage} differs from the "
            f"dataset's SOP Class UID {ds.SOPClassUID}",
        )

    def test_sop_instance_mismatch(self, archive: Archive) -> None:
        ds = make_instance()
        with pytest.raises(InstanceMismatchError) as excinfo:
            store(archive, ds, sop_instance_uid="1.2.3.4")
        assert str(excinfo.value) == (
            "The request's Affected SOP Instance UID 1.2.3.4 differs from the "
            f"dataset's SOP Instance UID {ds.SOPInstanceUID}"
        )

    def test_sop_instance_mismatch_stores_nothing(self, archive: Archive) -> None:
        with pytest.raises(InstanceMismatchError):
            store(archive, make_instance(), sop_instance_uid="1.2.3.4")
        assert stored_files(archive) == []
        assert count_rows(archive.engine, instances) == 0

    def test_study_matches(self, archive: Archive) -> None:
        ds = make_instance()
        result = store(archive, ds, study_instance_uid=ds.StudyInstanceUID)
        assert result.study_instance_uid == ds.StudyInstanceUID

    def test_study_mismatch_stores_nothing(self, archive: Archive) -> None:
        ds = make_instance()
        with pytest.raises(StudyMismatchError) as excinfo:
            store(archive, ds, study_instance_uid="1.2.3.4")
        assert str(excinfo.value) == (
            f"The dataset's Study Instance UID {ds.StudyInstanceUID} differs from the study "
            "1.2.3.4 the request stores into"
        )
        assert stored_files(archive) == []
        assert count_rows(archive.engine, instances) == 0


class TestStoreFiles:
    @pytest.mark.parametrize(
        ("name", "syntax"),
        [
            pytest.param("MR_small_implicit.dcm", ImplicitVRLittleEndian, id="implicit_le"),
            pytest.param("MR_small_bigendian.dcm", ExplicitVRBigEndian, id="explicit_be"),
            pytest.param("image_dfl.dcm", DeflatedExplicitVRLittleEndian, id="deflate"),
            pytest.param("MR_small_jp2klossless.dcm", JPEG2000Lossless, id="j2k_lossless"),
            pytest.param("MR_small_RLE.dcm", RLELossless, id="rle"),
        ],
    )
    def test_bytes_kept(self, archive: Archive, name: str, syntax: str) -> None:
        data = file_dataset(PYDICOM_TEST_FILES / name)
        result = archive.store(data, syntax)
        assert read_stored(archive, result.storage_key).endswith(data)

    def test_stored_file_readable(self, archive: Archive) -> None:
        path = PYDICOM_TEST_FILES / "MR_small_bigendian.dcm"
        result = archive.store(file_dataset(path), ExplicitVRBigEndian)
        stored = pydicom.dcmread(io.BytesIO(read_stored(archive, result.storage_key)))
        assert stored == pydicom.dcmread(path)


class TestReplace:
    def test_one_instance_row(self, archive: Archive) -> None:
        ds = make_instance(PatientName="Doe^John")
        store(archive, ds)
        ds.PatientName = "Doe^Johnny"
        result = store(archive, ds)
        assert result.replaced is True
        assert count_rows(archive.engine, instances) == 1

    def test_newest_attributes(self, archive: Archive) -> None:
        ds = make_instance(PatientName="Doe^John", StudyDescription="Brain")
        store(archive, ds)
        ds.PatientName = "Doe^Johnny"
        ds.StudyDescription = "Brain and neck"
        store(archive, ds)
        assert column_values(archive.engine, patients, "patient_name") == ["Doe^Johnny"]
        assert column_values(archive.engine, studies, "study_description") == ["Brain and neck"]

    def test_old_file_deleted(self, archive: Archive) -> None:
        ds = make_instance(PatientName="Doe^John")
        first = store(archive, ds)
        ds.PatientName = "Doe^Johnny"
        second = store(archive, ds)
        assert not archive.storage.exists(first.storage_key)
        assert stored_files(archive) == [second.storage_key]

    def test_index_points_to_new_file(self, archive: Archive) -> None:
        ds = make_instance()
        store(archive, ds)
        second = store(archive, ds)
        assert column_values(archive.engine, instances, "storage_key") == [second.storage_key]

    def test_emptied_parents_removed(self, archive: Archive) -> None:
        ds = make_instance(PatientID="PAT-1")
        store(archive, ds)
        moved = make_instance(SOPInstanceUID=ds.SOPInstanceUID, PatientID="PAT-2")
        store(archive, moved)
        assert column_values(archive.engine, patients, "patient_id") == ["PAT-2"]
        assert column_values(archive.engine, studies, "study_instance_uid") == [
            moved.StudyInstanceUID
        ]
        assert column_values(archive.engine, series, "series_instance_uid") == [
            moved.SeriesInstanceUID
        ]

    def test_event(self, archive: Archive) -> None:
        ds = make_instance()
        store(archive, ds)
        events = recorded(archive, InstanceStored)
        store(archive, ds)
        assert [event.replaced for event in events] == [True]


class TestRejectDuplicates:
    @pytest.fixture
    def rejecting(self, make_archive: Callable[..., Archive]) -> Archive:
        return make_archive(storage__duplicate_policy="reject")

    def test_raises(self, rejecting: Archive) -> None:
        ds = make_instance()
        store(rejecting, ds)
        with pytest.raises(DuplicateInstanceError) as excinfo:
            store(rejecting, ds)
        assert str(excinfo.value) == ds.SOPInstanceUID

    def test_first_file_kept(self, rejecting: Archive) -> None:
        ds = make_instance(PatientName="Doe^John")
        first = store(rejecting, ds)
        ds.PatientName = "Doe^Johnny"
        with pytest.raises(DuplicateInstanceError):
            store(rejecting, ds)
        assert stored_files(rejecting) == [first.storage_key]

    def test_first_index_entry_kept(self, rejecting: Archive) -> None:
        ds = make_instance(PatientName="Doe^John")
        first = store(rejecting, ds)
        ds.PatientName = "Doe^Johnny"
        with pytest.raises(DuplicateInstanceError):
            store(rejecting, ds)
        assert column_values(rejecting.engine, patients, "patient_name") == ["Doe^John"]
        assert column_values(rejecting.engine, instances, "storage_key") == [first.storage_key]

    def test_rejected_event(self, rejecting: Archive) -> None:
        ds = make_instance()
        store(rejecting, ds)
        events = recorded(rejecting, InstanceRejected)
        with pytest.raises(DuplicateInstanceError):
            store(rejecting, ds, sop_instance_uid=ds.SOPInstanceUID, source_ae_title="CT01")
        assert events == [
            InstanceRejected(ds.SOPInstanceUID, "CT01", "duplicate", category="duplicate")
        ]

    def test_writer_race_leaves_first_file(
        self, rejecting: Archive, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Another association stores the instance between the existence
        # check and the index transaction, so the writer rejects it.
        ds = make_instance()
        first = store(rejecting, ds)
        monkeypatch.setattr(IndexWriter, "instance_exists", lambda self, uid: False)
        with pytest.raises(DuplicateInstanceError):
            store(rejecting, ds)
        assert stored_files(rejecting) == [first.storage_key]


class TestIndexFailure:
    def test_raises_index_unavailable(
        self, archive: Archive, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        fail_index(monkeypatch)
        ds = make_instance()
        with pytest.raises(IndexUnavailableError) as excinfo:
            store(archive, ds)
        assert str(excinfo.value) == f"Cannot index {ds.SOPInstanceUID}: the index database failed"

    def test_no_new_file(self, archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
        fail_index(monkeypatch)
        with pytest.raises(IndexUnavailableError):
            store(archive, make_instance())
        assert stored_files(archive) == []

    def test_replaced_instance_intact(
        self, archive: Archive, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        ds = make_instance()
        first = store(archive, ds)
        fail_index(monkeypatch)
        with pytest.raises(IndexUnavailableError):
            store(archive, ds)
        assert stored_files(archive) == [first.storage_key]
        assert column_values(archive.engine, instances, "storage_key") == [first.storage_key]

    def test_existence_check_fails(
        self, make_archive: Callable[..., Archive], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        rejecting = make_archive(storage__duplicate_policy="reject")

        def instance_exists(self: IndexWriter, sop_instance_uid: str) -> bool:
            raise INDEX_FAILURE

        monkeypatch.setattr(IndexWriter, "instance_exists", instance_exists)
        ds = make_instance()
        with pytest.raises(IndexUnavailableError) as excinfo:
            store(rejecting, ds)
        assert str(excinfo.value) == (
            f"Cannot check whether {ds.SOPInstanceUID} exists: the index database failed"
        )
        assert stored_files(rejecting) == []

    def test_commit_applied_but_reply_lost(
        self, archive: Archive, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The database applied the commit, then the connection broke before its reply.
        real_add_instance = IndexWriter.add_instance

        def add_then_fail(self: IndexWriter, *args: Any, **kwargs: Any) -> None:
            real_add_instance(self, *args, **kwargs)
            raise INDEX_FAILURE

        monkeypatch.setattr(IndexWriter, "add_instance", add_then_fail)
        result = store(archive, make_instance())

        assert stored_files(archive) == [result.storage_key]
        assert column_values(archive.engine, instances, "storage_key") == [result.storage_key]

    def test_unknown_outcome_keeps_file_until_index_answers(
        self, archive: Archive, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        archive.journal = WriteJournal(tmp_path / "journal")
        fail_index(monkeypatch)

        def unreachable(self: IndexWriter, sop_instance_uid: str) -> str | None:
            raise INDEX_FAILURE

        with monkeypatch.context() as down:
            down.setattr(IndexWriter, "indexed_storage_key", unreachable)
            with pytest.raises(IndexUnavailableError):
                store(archive, make_instance())
            files_during_outage = stored_files(archive)
            assert archive.resolve_unknown_writes() == 0
        assert len(files_during_outage) == 1
        assert stored_files(archive) == files_during_outage

        assert archive.resolve_unknown_writes() == 1
        archive.journal.close()

        assert stored_files(archive) == []
        assert list((tmp_path / "journal").iterdir()) == []

    def test_search_fails(self, archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
        def search(self: IndexSearch, query: object) -> None:
            raise INDEX_FAILURE

        monkeypatch.setattr(IndexSearch, "search", search)
        query = parse_identifier(make_identifier("STUDY"))
        with pytest.raises(IndexUnavailableError, match=r"^The index database failed: "):
            list(archive.search(query))


class TestInvalidData:
    # pydicom warns while it reads arbitrary bytes as implicit VR elements.
    # The archive then finds no SOP Class UID.
    @pytest.mark.filterwarnings("ignore:Expected explicit VR, but found implicit VR:UserWarning")
    @pytest.mark.filterwarnings("ignore:VR lookup failed:UserWarning")
    def test_garbage_stores_nothing(self, archive: Archive) -> None:
        with pytest.raises(InvalidDatasetError):
            archive.store(b"This is not a DICOM dataset.\n" * 8, ExplicitVRLittleEndian)
        assert stored_files(archive) == []
        assert count_rows(archive.engine, instances) == 0

    def test_missing_uid_stores_nothing(self, archive: Archive) -> None:
        with pytest.raises(MissingAttributeError):
            store(archive, make_instance(SOPInstanceUID=None))
        assert stored_files(archive) == []
        assert count_rows(archive.engine, instances) == 0

    def test_truncated_stores_nothing(self, archive: Archive) -> None:
        data = file_dataset(PYDICOM_TEST_FILES / "JPEG2000.dcm")
        with pytest.raises(InvalidDatasetError):
            archive.store(data[:-100], "1.2.840.10008.1.2.4.91")
        assert stored_files(archive) == []

    def test_rejected_event(self, archive: Archive) -> None:
        events = recorded(archive, InstanceRejected)
        with pytest.raises(MissingAttributeError):
            store(archive, make_instance(SOPInstanceUID=None), source_ae_title="CT01")
        assert events == [
            InstanceRejected(
                "",
                "CT01",
                "The dataset has no SOP Instance UID (0008,0018); the sender must include it",
                category="invalid_dataset",
            )
        ]


class TestStorageFailure:
    def test_full_indexes_nothing(self, archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
        def put(key: str, chunks: object) -> int:
            raise StorageFullError(f"No space left to store {key}")

        monkeypatch.setattr(archive.storage, "put", put)
        with pytest.raises(StorageFullError):
            store(archive, make_instance())
        assert count_rows(archive.engine, instances) == 0

    def test_full_event_category(self, archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
        def put(key: str, chunks: object) -> int:
            raise StorageFullError(f"No space left to store {key}")

        monkeypatch.setattr(archive.storage, "put", put)
        events = recorded(archive, InstanceRejected)
        with pytest.raises(StorageFullError):
            store(archive, make_instance(), service="STOW-RS")
        assert [(event.category, event.service) for event in events] == [
            ("storage_full", "STOW-RS")
        ]
