"""Objects indexed in place in a bucket: their keys, and every storage back-end reading them.

The source bucket is on moto's S3 server on loopback. Each back-end must
stream such an object by ranged GETs, never write or delete it, and give
no local path for it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from dicomvault.archive import Archive
from dicomvault.config import StorageSettings, load_settings
from dicomvault.dicom.attributes import Level
from dicomvault.encryption.keys import generate_key_file, load_key_provider
from dicomvault.index.removal import preview_removal
from dicomvault.index.usage import count_usage
from dicomvault.index.writer import IndexWriter
from dicomvault.storage.base import StorageError
from dicomvault.storage.encrypted import EncryptedStorage
from dicomvault.storage.filesystem import FilesystemStorage
from dicomvault.storage.in_bucket import (
    in_bucket_key,
    in_bucket_object,
    is_in_bucket_key,
    is_indexed_in_place,
)
from dicomvault.storage.in_place import in_place_key
from dicomvault.storage.s3 import S3Storage
from dicomvault.storage.s3_reader import READ_BLOCK_MIN
from dicomvault.storage.setup import open_storage
from tests.support.datasets import make_instance
from tests.support.moto import MotoServer, RangeRecorder, s3_settings, source_settings
from tests.unit.test_index import stored_instance

OBJECT_NAME = "scans/2024/ct 1/img:001.dcm"
DATA = os.urandom(3 * READ_BLOCK_MIN + 123)

AnyStorage = FilesystemStorage | S3Storage | EncryptedStorage


@pytest.fixture
def source_bucket(moto_server: MotoServer) -> str:
    bucket = moto_server.new_bucket()
    moto_server.client().put_object(Bucket=bucket, Key=OBJECT_NAME, Body=DATA)
    return bucket


@pytest.fixture
def key(source_bucket: str) -> str:
    return in_bucket_key(source_bucket, OBJECT_NAME)


@pytest.fixture
def source(moto_server: MotoServer, tmp_path: Path) -> StorageSettings:
    return source_settings(moto_server, tmp_path)


def filesystem(moto_server: MotoServer, tmp_path: Path) -> FilesystemStorage:
    return FilesystemStorage(tmp_path / "storage", source_settings(moto_server, tmp_path))


def s3(moto_server: MotoServer, tmp_path: Path) -> S3Storage:
    return S3Storage(s3_settings(moto_server, moto_server.new_bucket(), tmp_path).storage)


def encrypted(inner: Callable[[MotoServer, Path], Any]) -> Callable[[MotoServer, Path], Any]:
    def factory(moto_server: MotoServer, tmp_path: Path) -> EncryptedStorage:
        key_file = tmp_path / "current.key"
        generate_key_file(key_file)
        settings = load_settings(
            environ={
                "DICOMVAULT_ENCRYPTION_ENABLED": "true",
                "DICOMVAULT_ENCRYPTION_KEY_FILE": str(key_file),
            },
            overrides={"storage.data_dir": str(tmp_path)},
        )
        return EncryptedStorage(
            inner(moto_server, tmp_path), load_key_provider(settings.encryption)
        )

    return factory


@pytest.fixture(
    params=[
        pytest.param(filesystem, id="filesystem"),
        pytest.param(s3, id="s3"),
        pytest.param(encrypted(filesystem), id="encrypted-filesystem"),
        pytest.param(encrypted(s3), id="encrypted-s3"),
    ]
)
def storage(request: pytest.FixtureRequest, moto_server: MotoServer, tmp_path: Path) -> AnyStorage:
    factory: Callable[[MotoServer, Path], AnyStorage] = request.param
    return factory(moto_server, tmp_path)


class TestKeys:
    def test_round_trip(self) -> None:
        key = in_bucket_key("scans", "2024/a:b/img.dcm")

        assert key == "inbucket:scans/2024/a:b/img.dcm"
        assert in_bucket_object(key) == ("scans", "2024/a:b/img.dcm")

    def test_other_keys(self, tmp_path: Path) -> None:
        assert in_bucket_object("ab/cd/x.dcm") is None
        assert in_bucket_object(in_place_key(tmp_path / "x.dcm")) is None

    @pytest.mark.parametrize(
        ("bucket", "name", "message"),
        [
            ("", "a.dcm", "Invalid bucket name ''"),
            ("a/b", "a.dcm", "Invalid bucket name 'a/b'"),
            ("scans", "", "needs a non-empty key"),
        ],
    )
    def test_invalid_parts(self, bucket: str, name: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            in_bucket_key(bucket, name)

    @pytest.mark.parametrize(
        "key", ["inbucket:", "inbucket:scans", "inbucket:scans/", "inbucket:/a"]
    )
    def test_invalid_key(self, key: str) -> None:
        with pytest.raises(ValueError) as excinfo:
            in_bucket_object(key)

        assert str(excinfo.value) == (
            f"Invalid in-bucket storage key {key!r}: expected 'inbucket:BUCKET/OBJECT-KEY'"
        )

    def test_kinds(self, tmp_path: Path) -> None:
        in_bucket = in_bucket_key("scans", "a.dcm")
        in_place = in_place_key(tmp_path / "a.dcm")

        assert is_in_bucket_key(in_bucket)
        assert not is_in_bucket_key(in_place)
        assert not is_in_bucket_key("ab/cd/a.dcm")
        assert is_indexed_in_place(in_bucket)
        assert is_indexed_in_place(in_place)
        assert not is_indexed_in_place("ab/cd/a.dcm")


class TestEveryBackend:
    def test_open_reads_object(self, storage: AnyStorage, key: str) -> None:
        with storage.open(key) as stream:
            assert stream.read() == DATA

    def test_open_seeks(self, storage: AnyStorage, key: str) -> None:
        with storage.open(key) as stream:
            assert stream.seekable()
            assert stream.seek(0, io.SEEK_END) == len(DATA)
            stream.seek(2 * READ_BLOCK_MIN + 7)
            assert stream.read(100) == DATA[2 * READ_BLOCK_MIN + 7 : 2 * READ_BLOCK_MIN + 107]
            stream.seek(5)
            assert stream.read(3) == DATA[5:8]

    def test_missing_object(self, storage: AnyStorage, source_bucket: str) -> None:
        key = in_bucket_key(source_bucket, "gone.dcm")

        with pytest.raises(FileNotFoundError, match=f"s3://{source_bucket}/gone.dcm"):
            storage.open(key)

    def test_exists(
        self, storage: AnyStorage, key: str, moto_server: MotoServer, source_bucket: str
    ) -> None:
        assert storage.exists(key)

        moto_server.client().delete_object(Bucket=source_bucket, Key=OBJECT_NAME)

        assert not storage.exists(key)

    def test_no_plain_path(self, storage: AnyStorage, key: str) -> None:
        assert storage.plain_path(key) is None

    def test_delete_keeps_source_object(
        self, storage: AnyStorage, key: str, moto_server: MotoServer, source_bucket: str
    ) -> None:
        storage.delete(key)

        assert moto_server.object_names(source_bucket) == [OBJECT_NAME]
        assert storage.exists(key)

    def test_put_rejected(
        self, storage: AnyStorage, key: str, moto_server: MotoServer, source_bucket: str
    ) -> None:
        with pytest.raises(ValueError, match="in-place files are never modified"):
            storage.put(key, [b"data"])

        body = moto_server.client().get_object(Bucket=source_bucket, Key=OBJECT_NAME)["Body"]
        assert body.read() == DATA


class TestReadPrefix:
    @pytest.mark.parametrize("factory", [filesystem, s3], ids=["filesystem", "s3"])
    def test_first_bytes(
        self,
        factory: Callable[[MotoServer, Path], FilesystemStorage | S3Storage],
        moto_server: MotoServer,
        tmp_path: Path,
        key: str,
    ) -> None:
        storage = factory(moto_server, tmp_path)

        assert storage.read_prefix(key, 132) == DATA[:132]

    def test_s3_in_place_file(self, moto_server: MotoServer, tmp_path: Path) -> None:
        path = tmp_path / "a.dcm"
        path.write_bytes(DATA[:1000])

        assert s3(moto_server, tmp_path).read_prefix(in_place_key(path), 10) == DATA[:10]


class TestRangedReads:
    def test_s3_reads_only_requested_blocks(
        self, moto_server: MotoServer, tmp_path: Path, source_bucket: str
    ) -> None:
        large = os.urandom(12 * 1024 * 1024)
        moto_server.client().put_object(Bucket=source_bucket, Key="large.dcm", Body=large)
        storage = s3(moto_server, tmp_path)
        recorder = RangeRecorder(storage)

        with storage.open(in_bucket_key(source_bucket, "large.dcm")) as stream:
            stream.seek(10 * 1024 * 1024)
            frame = stream.read(5000)

        assert frame == large[10 * 1024 * 1024 : 10 * 1024 * 1024 + 5000]
        assert len(recorder.ranges) == 2
        assert recorder.bytes_requested == 2 * READ_BLOCK_MIN

    def test_object_replaced_while_open(
        self, moto_server: MotoServer, tmp_path: Path, source_bucket: str, key: str
    ) -> None:
        storage = filesystem(moto_server, tmp_path)

        with storage.open(key) as stream:
            stream.read(10)
            moto_server.client().put_object(Bucket=source_bucket, Key=OBJECT_NAME, Body=b"new")
            stream.seek(2 * READ_BLOCK_MIN)
            with pytest.raises(StorageError, match="changed while it was read"):
                stream.read(10)


class TestFilesystemSource:
    def test_without_source_settings(self, tmp_path: Path, key: str) -> None:
        storage = FilesystemStorage(tmp_path / "storage")

        with pytest.raises(StorageError) as excinfo:
            storage.open(key)

        assert str(excinfo.value) == (
            f"Cannot read {key}: the storage {tmp_path / 'storage'} was opened without the "
            "S3 settings that reach source buckets"
        )

    def test_open_storage_passes_settings(self, tmp_path: Path) -> None:
        settings = load_settings(environ={}, overrides={"storage.data_dir": str(tmp_path)})

        storage = open_storage(settings)

        assert isinstance(storage, FilesystemStorage)
        assert storage.source == settings.storage

    def test_stored_files_unaffected(self, source: StorageSettings, tmp_path: Path) -> None:
        storage = FilesystemStorage(tmp_path / "storage", source)
        storage.put("ab/cd/x.dcm", [b"data"])

        assert storage.plain_path("ab/cd/x.dcm") == tmp_path / "storage" / "ab/cd/x.dcm"
        assert storage.read_prefix("ab/cd/x.dcm", 2) == b"da"


class TestIndex:
    def test_remove_keeps_source_object(
        self,
        archive: Archive,
        migrated_engine: Engine,
        moto_server: MotoServer,
        source_bucket: str,
        key: str,
    ) -> None:
        ds = make_instance()
        IndexWriter(migrated_engine).add_instance(stored_instance(ds, key))

        result = archive.remove(Level.STUDY, ds.StudyInstanceUID, delete_files=True)

        assert result.removed == (ds.SOPInstanceUID,)
        assert (result.deleted_files, result.kept_in_place) == (0, 1)
        assert moto_server.object_names(source_bucket) == [OBJECT_NAME]

    def test_counted_as_in_place(self, migrated_engine: Engine) -> None:
        writer = IndexWriter(migrated_engine)
        stored = make_instance()
        in_bucket = make_instance(StudyInstanceUID=stored.StudyInstanceUID)
        writer.add_instance(stored_instance(stored, "aa/bb/1.dcm"))
        writer.add_instance(stored_instance(in_bucket, in_bucket_key("scans", "a.dcm")))

        usage = count_usage(migrated_engine)
        preview = preview_removal(migrated_engine, stored.StudyInstanceUID)

        assert (usage.stored_instances, usage.in_place_instances) == (1, 1)
        assert (usage.stored_bytes, usage.in_place_bytes) == (1000, 1000)
        assert preview is not None
        assert (preview.instances, preview.in_place_instances) == (2, 1)
