"""The C-STORE handler: each failure of the archive becomes its DIMSE status."""

from __future__ import annotations

from collections.abc import Iterable
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]
from sqlalchemy.exc import OperationalError

from dicomvault.archive import Archive
from dicomvault.audit import AuditEvent
from dicomvault.config import load_settings
from dicomvault.dimse.access_control import AccessControl
from dicomvault.dimse.status import Status
from dicomvault.dimse.storage_scp import handle_store
from dicomvault.index.database import open_index_engine
from dicomvault.index.writer import IndexWriter
from dicomvault.permissions import ALL_PERMISSIONS, Permission
from dicomvault.storage.base import StorageError, StorageFullError
from dicomvault.storage.filesystem import FilesystemStorage
from tests.support.access import FakeAssociation, granted_access
from tests.support.datasets import encode_dataset

SOP_INSTANCE_UID = "1.2.3.4.5"


def ct_dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = SOP_INSTANCE_UID
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.1"
    ds.PatientName = "STORE^TEST"
    return ds


def store_event(
    data: bytes, sop_class_uid: str = CTImageStorage, sop_instance_uid: str = SOP_INSTANCE_UID
) -> SimpleNamespace:
    """Enough of a pynetdicom C-STORE event for the handler."""
    return SimpleNamespace(
        request=SimpleNamespace(
            DataSet=BytesIO(data),
            AffectedSOPClassUID=sop_class_uid,
            AffectedSOPInstanceUID=sop_instance_uid,
        ),
        context=SimpleNamespace(transfer_syntax=ExplicitVRLittleEndian),
        assoc=FakeAssociation("STORESCU"),
    )


def store(
    event: SimpleNamespace,
    archive: Archive,
    permissions: frozenset[Permission] = ALL_PERMISSIONS,
) -> Dataset:
    """Run the C-STORE handler on an association admitted with ``permissions``."""
    return handle_store(event, archive, granted_access(archive, event.assoc, permissions))


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    settings = load_settings(environ={}, overrides={"storage.data_dir": str(tmp_path)})
    engine = open_index_engine(settings.index_url)
    return Archive(settings, engine, FilesystemStorage(tmp_path / "storage"))


def stored_files(archive: Archive) -> list[Path]:
    return sorted((archive.settings.data_dir / "storage").rglob("*.dcm"))


class TestStatuses:
    def test_success(self, archive: Archive) -> None:
        rsp = store(store_event(encode_dataset(ct_dataset())), archive)

        assert rsp.Status == Status.SUCCESS
        assert len(stored_files(archive)) == 1

    def test_sop_class_mismatch_warns(self, archive: Archive) -> None:
        rsp = store(
            store_event(encode_dataset(ct_dataset()), sop_class_uid=MRImageStorage), archive
        )

        assert rsp.Status == 0xB007
        assert rsp.ErrorComment == "SOP Class UID of request and dataset differ"

    def test_sop_instance_mismatch_fails(self, archive: Archive) -> None:
        rsp = store(store_event(encode_dataset(ct_dataset()), sop_instance_uid="9.9.9"), archive)

        assert rsp.Status == 0xA900
        assert stored_files(archive) == []

    def test_missing_uid_fails(self, archive: Archive) -> None:
        ds = ct_dataset()
        del ds.SeriesInstanceUID
        rsp = store(store_event(encode_dataset(ds)), archive)

        assert rsp.Status == 0xA900
        assert rsp.ErrorComment == "The dataset has no Series Instance UID (0020,000E); the..."
        assert stored_files(archive) == []

    def test_garbage_fails(self, archive: Archive) -> None:
        rsp = store(store_event(b"\x08\x00\x16\x00UI\xff\x7f" + b"x" * 20), archive)

        assert rsp.Status == 0xC000
        assert rsp.ErrorComment.startswith("The dataset is truncated")
        assert stored_files(archive) == []

    def test_storage_full(self, archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
        def full(key: str, chunks: Iterable[bytes]) -> int:
            raise StorageFullError(f"No space left to store {key}")

        monkeypatch.setattr(archive.storage, "put", full)
        rsp = store(store_event(encode_dataset(ct_dataset())), archive)

        assert rsp.Status == 0xA700
        assert rsp.ErrorComment.startswith("No space left to store")

    def test_storage_error(self, archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
        def broken(key: str, chunks: Iterable[bytes]) -> int:
            raise StorageError(f"Cannot write {key}: Input/output error")

        monkeypatch.setattr(archive.storage, "put", broken)
        rsp = store(store_event(encode_dataset(ct_dataset())), archive)

        assert rsp.Status == 0x0110

    def test_index_failure(self, archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
        def fail(*args: object, **kwargs: object) -> None:
            raise OperationalError("INSERT", {}, Exception("database is unavailable"))

        monkeypatch.setattr(IndexWriter, "add_instance", fail)
        rsp = store(store_event(encode_dataset(ct_dataset())), archive)

        assert rsp.Status == 0x0110
        assert rsp.ErrorComment == f"Cannot index {SOP_INSTANCE_UID}: the index database failed"
        assert stored_files(archive) == []

    def test_duplicate_rejected(self, tmp_path: Path) -> None:
        settings = load_settings(
            environ={},
            overrides={
                "storage.data_dir": str(tmp_path),
                "storage.duplicate_policy": "reject",
            },
        )
        archive = Archive(
            settings, open_index_engine(settings.index_url), FilesystemStorage(tmp_path / "storage")
        )
        first = store(store_event(encode_dataset(ct_dataset())), archive)
        second = store(store_event(encode_dataset(ct_dataset())), archive)

        assert first.Status == Status.SUCCESS
        assert second.Status == 0x0111
        assert second.ErrorComment == (
            "Duplicate SOP Instance: already stored, duplicates are rejected"
        )
        assert len(stored_files(archive)) == 1


class TestAccess:
    def test_without_store_permission_refused(self, archive: Archive) -> None:
        audited: list[AuditEvent] = []
        archive.events.subscribe(AuditEvent, audited.append)

        rsp = store(
            store_event(encode_dataset(ct_dataset())),
            archive,
            frozenset({Permission.QUERY, Permission.RETRIEVE}),
        )

        assert rsp.Status == 0x0124
        assert rsp.ErrorComment == "STORESCU lacks the store permission for C-STORE"
        assert stored_files(archive) == []
        assert [event.description for event in audited] == [
            "C-STORE refused: registered node STORESCU lacks the store permission"
        ]
        assert audited[0].detail == {
            "operation": "C-STORE",
            "permission": "store",
            "caller": "registered node",
        }

    def test_store_permission_enough(self, archive: Archive) -> None:
        rsp = store(
            store_event(encode_dataset(ct_dataset())), archive, frozenset({Permission.STORE})
        )

        assert rsp.Status == Status.SUCCESS

    def test_association_without_decision_refused(self, archive: Archive) -> None:
        event = store_event(encode_dataset(ct_dataset()))

        rsp = handle_store(event, archive, AccessControl(archive))

        assert rsp.Status == 0x0124
        assert rsp.ErrorComment == "Not authorized: no access decision for this association"
        assert stored_files(archive) == []
