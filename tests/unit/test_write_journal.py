"""Unit tests of the write journal and of the start-up recovery that reads it.

The recovery tests run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import Engine

from dicomvault.archive import Archive, StoreResult
from dicomvault.recovery import journal_directory, remove_unindexed_writes
from dicomvault.storage.base import StorageError
from dicomvault.storage.filesystem import FilesystemStorage
from dicomvault.storage.journal import JournalEntry, WriteJournal, read_abandoned_journals
from tests.support.datasets import encode_dataset, make_instance
from tests.unit.conftest import build_archive


def journal_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.journal"))


def write_dead_journal(directory: Path, text: str) -> Path:
    """Write a journal as a process that died would have left it: unlocked."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "4242-deadbeef.journal"
    path.write_text(text)
    return path


def storage_of(archive: Archive) -> FilesystemStorage:
    storage = archive.storage
    assert isinstance(storage, FilesystemStorage)
    return storage


class TestWriteJournal:
    def test_entry_written_then_file_removed(self, tmp_path: Path) -> None:
        journal = WriteJournal(tmp_path)

        with journal.writing("1.2.3", "ab/cd/key.dcm"):
            (path,) = journal_files(tmp_path)
            assert path.read_text() == "1.2.3 ab/cd/key.dcm\n"
        journal.close()

        assert journal_files(tmp_path) == []

    def test_rotated_file_is_removed_when_settled(self, tmp_path: Path) -> None:
        journal = WriteJournal(tmp_path, rotate_after=2)

        with journal.writing("1.1", "k1"):
            with journal.writing("1.2", "k2"), journal.writing("1.3", "k3"):
                # The first file is full and retired, but has two unsettled entries.
                assert len(journal_files(tmp_path)) == 2
            assert len(journal_files(tmp_path)) == 2
        (current,) = journal_files(tmp_path)
        assert current.read_text() == "1.3 k3\n"
        journal.close()

        assert journal_files(tmp_path) == []

    def test_journal_of_living_writer_is_not_read(self, tmp_path: Path) -> None:
        journal = WriteJournal(tmp_path)

        with journal.writing("1.2.3", "key"):
            abandoned = list(read_abandoned_journals(tmp_path))

        assert abandoned == []

    def test_dead_journal_skips_cut_line(self, tmp_path: Path) -> None:
        write_dead_journal(tmp_path, "1.1 k1\n1.2 k2\n1.3 k")

        (abandoned,) = read_abandoned_journals(tmp_path)
        abandoned.discard()

        assert abandoned.entries == (JournalEntry("1.1", "k1"), JournalEntry("1.2", "k2"))
        assert journal_files(tmp_path) == []

    def test_unwritable_journal_is_a_storage_error(self, tmp_path: Path) -> None:
        journal = WriteJournal(tmp_path / "journal")
        journal.directory.rmdir()
        journal.directory.write_text("a file where the folder was")

        with pytest.raises(StorageError, match="write journal"), journal.writing("1.2.3", "key"):
            pass


class TestRecovery:
    def test_unindexed_object_removed_and_indexed_kept(
        self, tmp_path: Path, migrated_engine: Engine
    ) -> None:
        archive = build_archive(tmp_path, migrated_engine)
        stored = store_one(archive)
        storage = storage_of(archive)
        storage.put("00/00/orphan.dcm", [b"never indexed"])
        write_dead_journal(
            journal_directory(tmp_path),
            f"1.2.3.999 00/00/orphan.dcm\n{stored.sop_instance_uid} {stored.storage_key}\n",
        )

        report = remove_unindexed_writes(tmp_path, storage, migrated_engine)

        assert dataclasses.astuple(report) == (1, 2, 1)
        assert not storage.exists("00/00/orphan.dcm")
        assert storage.exists(stored.storage_key)
        assert journal_files(journal_directory(tmp_path)) == []

    def test_replaced_object_removed(self, tmp_path: Path, migrated_engine: Engine) -> None:
        archive = build_archive(tmp_path, migrated_engine)
        stored = store_one(archive)
        storage = storage_of(archive)
        storage.put("00/00/old-copy.dcm", [b"the replaced file"])
        write_dead_journal(
            journal_directory(tmp_path), f"{stored.sop_instance_uid} 00/00/old-copy.dcm\n"
        )

        report = remove_unindexed_writes(tmp_path, storage, migrated_engine)

        assert report.removed == 1
        assert not storage.exists("00/00/old-copy.dcm")
        assert storage.exists(stored.storage_key)

    def test_journal_kept_when_storage_fails(
        self, tmp_path: Path, migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        storage = FilesystemStorage(tmp_path / "storage")
        storage.put("00/00/orphan.dcm", [b"never indexed"])
        path = write_dead_journal(journal_directory(tmp_path), "1.2.3.999 00/00/orphan.dcm\n")

        def failing_delete(key: str) -> None:
            raise StorageError(f"Cannot delete {key}: read-only file system")

        monkeypatch.setattr(storage, "delete", failing_delete)
        with pytest.raises(StorageError, match="never indexed"):
            remove_unindexed_writes(tmp_path, storage, migrated_engine)

        assert path.exists()
        assert storage.exists("00/00/orphan.dcm")


class TestArchiveWithJournal:
    def test_store_and_replace_leave_no_journal(
        self, tmp_path: Path, migrated_engine: Engine
    ) -> None:
        archive = build_archive(tmp_path, migrated_engine)
        archive.journal = WriteJournal(journal_directory(tmp_path))
        ds = make_instance()

        first = archive.store(encode_dataset(ds), ExplicitVRLittleEndian)
        second = archive.store(encode_dataset(ds), ExplicitVRLittleEndian)
        archive.journal.close()

        assert second.replaced
        assert not storage_of(archive).exists(first.storage_key)
        assert journal_files(journal_directory(tmp_path)) == []

    def test_entry_written_before_object(
        self, tmp_path: Path, migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        archive = build_archive(tmp_path, migrated_engine)
        archive.journal = WriteJournal(journal_directory(tmp_path))
        storage = storage_of(archive)
        seen: list[str] = []
        original_put = storage.put

        def put_and_look(key: str, chunks: object) -> int:
            (path,) = journal_files(journal_directory(tmp_path))
            seen.append(path.read_text())
            return original_put(key, chunks)  # type: ignore[arg-type]

        monkeypatch.setattr(storage, "put", put_and_look)
        stored = store_one(archive)

        assert seen == [f"{stored.sop_instance_uid} {stored.storage_key}\n"]


def store_one(archive: Archive) -> StoreResult:
    return archive.store(encode_dataset(make_instance()), ExplicitVRLittleEndian)
