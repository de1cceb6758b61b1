"""Unit tests of the archive check: checksums at ingest, each kind of problem and its repair.

Every test runs on SQLite and on PostgreSQL; those of S3 storage use moto's server.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import Engine, select

from dicomvault.archive import Archive, StoreResult
from dicomvault.config import load_settings
from dicomvault.dicom.header import encode_file_meta
from dicomvault.encryption.keys import generate_key_file
from dicomvault.fsck import ProblemKind, check_archive, format_report, repair_archive
from dicomvault.index.schema import instances
from dicomvault.storage.encrypted import EncryptedStorage
from dicomvault.storage.filesystem import FilesystemStorage
from dicomvault.storage.s3 import S3Storage
from dicomvault.storage.setup import open_storage
from tests.support.corpus import dataset_offset
from tests.support.datasets import encode_dataset, make_instance
from tests.support.moto import PREFIX, MotoServer, s3_settings


def store_one(archive: Archive) -> StoreResult:
    return archive.store(encode_dataset(make_instance()), ExplicitVRLittleEndian)


def storage_of(archive: Archive) -> FilesystemStorage:
    storage = archive.storage
    assert isinstance(storage, FilesystemStorage)
    return storage


def recorded_sha256(archive: Archive, sop_instance_uid: str) -> str | None:
    query = select(instances.c.sha256).where(instances.c.sop_instance_uid == sop_instance_uid)
    with archive.engine.connect() as connection:
        value: str | None = connection.execute(query).scalar_one()
    return value


def delete_series_without_foreign_keys(archive: Archive) -> None:
    """Delete every series row of a SQLite index and leave its instance rows.

    A plain sqlite3 connection enforces foreign keys only after PRAGMA foreign_keys=ON.
    """
    database = archive.engine.url.database
    assert database is not None
    connection = sqlite3.connect(database)
    try:
        with connection:
            connection.execute("DELETE FROM series")
    finally:
        connection.close()


def indexed_uids(archive: Archive) -> set[str]:
    with archive.engine.connect() as connection:
        return set(connection.execute(select(instances.c.sop_instance_uid)).scalars())


class TestChecksumAtIngest:
    def test_store_records_sha256_of_file(self, archive: Archive) -> None:
        result = store_one(archive)

        written = storage_of(archive).path_for(result.storage_key).read_bytes()
        assert recorded_sha256(archive, result.sop_instance_uid) == (
            hashlib.sha256(written).hexdigest()
        )


class TestEncryptedStorage:
    def test_checksum_of_plain_bytes_verified(
        self, migrated_engine: Engine, tmp_path: Path
    ) -> None:
        key_file = tmp_path / "current.key"
        generate_key_file(key_file)
        settings = load_settings(
            environ={
                "DICOMVAULT_ENCRYPTION_ENABLED": "true",
                "DICOMVAULT_ENCRYPTION_KEY_FILE": str(key_file),
            },
            overrides={"storage.data_dir": str(tmp_path / "data")},
        )
        storage = open_storage(settings, serving=True)
        assert isinstance(storage, EncryptedStorage)
        archive = Archive(settings, migrated_engine, storage)
        result = store_one(archive)

        with storage.open(result.storage_key) as stream:
            plain = stream.read()
        sealed = storage.inner.path_for(result.storage_key)  # type: ignore[union-attr]
        report = check_archive(migrated_engine, storage, verify_checksums=True)

        assert recorded_sha256(archive, result.sop_instance_uid) == (
            hashlib.sha256(plain).hexdigest()
        )
        assert hashlib.sha256(sealed.read_bytes()).hexdigest() != hashlib.sha256(plain).hexdigest()
        assert report.problems == []
        assert report.verified == 1


class TestCheck:
    def test_clean_archive_has_no_problems(self, archive: Archive) -> None:
        store_one(archive)
        store_one(archive)

        report = check_archive(archive.engine, archive.storage, verify_checksums=True)

        assert report.problems == []
        assert report.instances == 2
        assert report.objects == 2
        assert report.verified == 2

    def test_deleted_file_is_missing(self, archive: Archive) -> None:
        result = store_one(archive)
        storage_of(archive).path_for(result.storage_key).unlink()

        report = check_archive(archive.engine, archive.storage)

        assert [(p.kind, p.uid) for p in report.problems] == [
            (ProblemKind.MISSING, result.sop_instance_uid)
        ]

    def test_extra_file_is_orphan(self, archive: Archive) -> None:
        ds = make_instance()
        meta = encode_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
        storage_of(archive).put("aa/bb/extra.dcm", [meta, encode_dataset(ds)])

        report = check_archive(archive.engine, archive.storage)

        assert [(p.kind, p.key) for p in report.problems] == [
            (ProblemKind.ORPHAN, "aa/bb/extra.dcm")
        ]

    def test_corrupted_byte_is_checksum_mismatch(self, archive: Archive) -> None:
        result = store_one(archive)
        path = storage_of(archive).path_for(result.storage_key)
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))

        unverified = check_archive(archive.engine, archive.storage)
        verified = check_archive(archive.engine, archive.storage, verify_checksums=True)

        assert unverified.problems == []
        assert [(p.kind, p.uid) for p in verified.problems] == [
            (ProblemKind.CHECKSUM, result.sop_instance_uid)
        ]

    def test_part_file_is_temporary_leftover(self, archive: Archive) -> None:
        (storage_of(archive).temp_dir / "0123.part").write_bytes(b"partial")

        report = check_archive(archive.engine, archive.storage)

        assert [(p.kind, p.key) for p in report.problems] == [
            (ProblemKind.TEMPORARY, ".tmp/0123.part")
        ]

    def test_instance_without_series_is_parentless(self, archive: Archive) -> None:
        if archive.engine.dialect.name != "sqlite":
            pytest.skip("only SQLite lets a test turn off foreign keys without a superuser")
        result = store_one(archive)
        delete_series_without_foreign_keys(archive)

        report = check_archive(archive.engine, archive.storage)

        assert [(p.kind, p.uid) for p in report.problems] == [
            (ProblemKind.PARENTLESS, result.sop_instance_uid)
        ]

    def test_parentless_instance_indexed_again(self, archive: Archive) -> None:
        if archive.engine.dialect.name != "sqlite":
            pytest.skip("only SQLite lets a test turn off foreign keys without a superuser")
        result = store_one(archive)
        delete_series_without_foreign_keys(archive)
        report = check_archive(archive.engine, archive.storage)

        repair_archive(archive.engine, archive.storage, report)

        assert report.unrepaired == []
        assert indexed_uids(archive) == {result.sop_instance_uid}
        assert check_archive(archive.engine, archive.storage).problems == []

    def test_instance_without_checksum_is_counted(self, archive: Archive) -> None:
        result = store_one(archive)
        with archive.engine.begin() as connection:
            connection.execute(instances.update().values(sha256=None))

        report = check_archive(archive.engine, archive.storage, verify_checksums=True)

        assert report.problems == []
        assert report.without_checksum == 1
        assert recorded_sha256(archive, result.sop_instance_uid) is None


class TestRepair:
    def test_missing_instance_removed_from_index(self, archive: Archive) -> None:
        kept = store_one(archive)
        lost = store_one(archive)
        storage_of(archive).path_for(lost.storage_key).unlink()
        report = check_archive(archive.engine, archive.storage)

        repair_archive(archive.engine, archive.storage, report)

        assert report.unrepaired == []
        assert indexed_uids(archive) == {kept.sop_instance_uid}
        assert check_archive(archive.engine, archive.storage).problems == []

    def test_orphan_indexed_with_checksum(self, archive: Archive) -> None:
        ds = make_instance()
        meta = encode_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
        data = meta + encode_dataset(ds)
        storage_of(archive).put("aa/bb/extra.dcm", [data])
        report = check_archive(archive.engine, archive.storage)

        repair_archive(archive.engine, archive.storage, report)

        assert report.unrepaired == []
        assert indexed_uids(archive) == {ds.SOPInstanceUID}
        assert recorded_sha256(archive, ds.SOPInstanceUID) == hashlib.sha256(data).hexdigest()
        assert check_archive(archive.engine, archive.storage, True).problems == []

    def test_orphan_copy_replaces_missing_instance(self, archive: Archive) -> None:
        result = store_one(archive)
        path = storage_of(archive).path_for(result.storage_key)
        storage_of(archive).put("aa/bb/moved.dcm", [path.read_bytes()])
        path.unlink()
        report = check_archive(archive.engine, archive.storage)

        repair_archive(archive.engine, archive.storage, report)

        assert report.unrepaired == []
        assert indexed_uids(archive) == {result.sop_instance_uid}
        assert check_archive(archive.engine, archive.storage).problems == []

    def test_identical_copy_of_indexed_instance_deleted(self, archive: Archive) -> None:
        # A server killed between the file's rename and the index commit
        # leaves such a copy once the client has sent the instance again.
        result = store_one(archive)
        path = storage_of(archive).path_for(result.storage_key)
        storage_of(archive).put("aa/bb/copy.dcm", [path.read_bytes()])
        report = check_archive(archive.engine, archive.storage)

        repair_archive(archive.engine, archive.storage, report)

        assert report.unrepaired == []
        assert not storage_of(archive).exists("aa/bb/copy.dcm")
        assert path.exists()
        assert check_archive(archive.engine, archive.storage, True).problems == []

    def test_copy_from_other_association_deleted(self, archive: Archive) -> None:
        result = store_one(archive)
        data = storage_of(archive).path_for(result.storage_key).read_bytes()
        meta = encode_file_meta(
            result.sop_class_uid, result.sop_instance_uid, ExplicitVRLittleEndian, "OTHERSCU"
        )
        storage_of(archive).put("aa/bb/copy.dcm", [meta, data[dataset_offset(data) :]])
        report = check_archive(archive.engine, archive.storage)

        repair_archive(archive.engine, archive.storage, report)

        assert report.unrepaired == []
        assert not storage_of(archive).exists("aa/bb/copy.dcm")

    def test_differing_copy_of_indexed_instance_kept(self, archive: Archive) -> None:
        result = store_one(archive)
        ds = make_instance(SOPInstanceUID=result.sop_instance_uid, PatientName="Other^Version")
        meta = encode_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
        storage_of(archive).put("aa/bb/copy.dcm", [meta, encode_dataset(ds)])
        report = check_archive(archive.engine, archive.storage)

        repair_archive(archive.engine, archive.storage, report)

        assert [p.key for p in report.unrepaired] == ["aa/bb/copy.dcm"]
        assert "second copy" in report.unrepaired[0].detail
        assert storage_of(archive).exists("aa/bb/copy.dcm")

    def test_copy_of_damaged_indexed_file_kept(self, archive: Archive) -> None:
        result = store_one(archive)
        path = storage_of(archive).path_for(result.storage_key)
        storage_of(archive).put("aa/bb/copy.dcm", [path.read_bytes()])
        path.write_bytes(path.read_bytes()[:-1] + b"\x00")
        report = check_archive(archive.engine, archive.storage)

        repair_archive(archive.engine, archive.storage, report)

        assert [p.key for p in report.unrepaired] == ["aa/bb/copy.dcm"]
        assert storage_of(archive).exists("aa/bb/copy.dcm")

    def test_unreadable_orphan_left_unrepaired(self, archive: Archive) -> None:
        storage_of(archive).put("aa/bb/junk.dcm", [b"not DICOM"])
        report = check_archive(archive.engine, archive.storage)

        repair_archive(archive.engine, archive.storage, report)

        assert [p.key for p in report.unrepaired] == ["aa/bb/junk.dcm"]
        assert storage_of(archive).exists("aa/bb/junk.dcm")

    def test_part_file_removed(self, archive: Archive) -> None:
        leftover = storage_of(archive).temp_dir / "0123.part"
        leftover.write_bytes(b"partial")
        report = check_archive(archive.engine, archive.storage)

        repair_archive(archive.engine, archive.storage, report)

        assert report.unrepaired == []
        assert not leftover.exists()

    def test_checksum_mismatch_not_repaired(self, archive: Archive) -> None:
        result = store_one(archive)
        path = storage_of(archive).path_for(result.storage_key)
        path.write_bytes(path.read_bytes()[:-1] + b"\x00")
        report = check_archive(archive.engine, archive.storage, verify_checksums=True)

        repair_archive(archive.engine, archive.storage, report)

        assert [p.kind for p in report.unrepaired] == [ProblemKind.CHECKSUM]
        assert indexed_uids(archive) == {result.sop_instance_uid}


class TestFormatReport:
    def test_lists_counts_and_problems(self, archive: Archive) -> None:
        result = store_one(archive)
        storage_of(archive).path_for(result.storage_key).unlink()
        report = check_archive(archive.engine, archive.storage)

        text = format_report(report, verify_checksums=False, repaired=False)

        assert "missing: 1" in text
        assert "orphan: 0" in text
        assert f"missing {result.storage_key} {result.sop_instance_uid}" in text


class TestS3Storage:
    def test_problems_found_and_repaired(
        self, migrated_engine: Engine, moto_server: MotoServer, tmp_path: Path
    ) -> None:
        bucket = moto_server.new_bucket()
        settings = s3_settings(moto_server, bucket, tmp_path)
        storage = S3Storage(settings.storage)
        storage.min_stale_upload_age = 0
        archive = Archive(settings, migrated_engine, storage)
        kept = store_one(archive)
        lost = store_one(archive)
        storage.delete(lost.storage_key)
        extra = make_instance()
        meta = encode_file_meta(extra.SOPClassUID, extra.SOPInstanceUID, ExplicitVRLittleEndian)
        storage.put("aa/bb/extra.dcm", [meta, encode_dataset(extra)])
        moto_server.client().create_multipart_upload(Bucket=bucket, Key=PREFIX + "cc/dd/x.dcm")

        report = check_archive(migrated_engine, storage, verify_checksums=True)
        kinds = sorted(p.kind.value for p in report.problems)
        repair_archive(migrated_engine, storage, report)

        assert kinds == ["missing", "orphan", "temporary"]
        assert report.verified == 1
        assert report.unrepaired == []
        assert indexed_uids(archive) == {kept.sop_instance_uid, extra.SOPInstanceUID}
        assert moto_server.multipart_uploads(bucket) == []
        assert check_archive(migrated_engine, storage).problems == []
