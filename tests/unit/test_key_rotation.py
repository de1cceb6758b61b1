"""Unit tests for key rotation: in-place rewrapping, interrupted runs and resealing."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from dicomvault.encryption.key_record import KeyRecord
from dicomvault.encryption.keys import (
    KeyProvider,
    LocalKeyProvider,
    generate_key_file,
    read_key_file,
)
from dicomvault.encryption.object_format import (
    KeySlot,
    ObjectHeader,
    SealedObjectError,
    is_sealed,
)
from dicomvault.encryption.rotation import (
    UNENCRYPTED,
    Outcome,
    finish_rotation,
    rotate_object,
    rotate_storage,
    survey_storage,
)
from dicomvault.storage.encrypted import EncryptedStorage
from dicomvault.storage.filesystem import FilesystemStorage
from dicomvault.storage.setup import StorageSetupError, open_storage, record_place
from tests.support.moto import PART_SIZE, MotoServer, s3_settings
from tests.unit.test_encrypted_storage import encrypted_settings, plain_settings

CONTENT = {f"0{n}/aa/object{n}.dcm": os.urandom(150_000 + n) for n in range(3)}
# Sealed, larger than one part, so that its upload is a multipart one.
LARGE = os.urandom(PART_SIZE + 300_000)


@pytest.fixture
def old_key(tmp_path: Path) -> Path:
    path = tmp_path / "old.key"
    generate_key_file(path)
    return path


@pytest.fixture
def new_key(tmp_path: Path) -> Path:
    path = tmp_path / "new.key"
    generate_key_file(path)
    return path


@pytest.fixture
def data_dir(tmp_path: Path, old_key: Path) -> Path:
    """A data directory whose objects are sealed under the old key."""
    directory = tmp_path / "data"
    storage = open_storage(encrypted_settings(directory, old_key), serving=True)
    for key, data in CONTENT.items():
        storage.put(key, [data])
    return directory


@pytest.fixture
def rotating(data_dir: Path, old_key: Path, new_key: Path) -> EncryptedStorage:
    """The storage opened with the new key current and the old key previous."""
    storage = open_storage(encrypted_settings(data_dir, new_key, old_key), serving=True)
    assert isinstance(storage, EncryptedStorage)
    storage.accept_plaintext = True
    return storage


LONG_KEY_ID = "kms:" + "x" * 250


class LongIdProvider:
    """The current key of ``base`` under an id too long for the slots of local keys."""

    def __init__(self, base: KeyProvider) -> None:
        self.base = base

    @property
    def current_key_id(self) -> str:
        return LONG_KEY_ID

    @property
    def key_ids(self) -> tuple[str, ...]:
        return (LONG_KEY_ID, *self.base.key_ids)

    @property
    def current_key_setting(self) -> str:
        return "the test's current key"

    def earlier_key_setting(self, key_id: str) -> str:
        return "the test's earlier keys"

    def wrap(self, data_key: bytes) -> bytes:
        return self.base.wrap(data_key)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        if key_id == LONG_KEY_ID:
            key_id = self.base.current_key_id
        return self.base.unwrap(key_id, wrapped)

    def describe(self) -> str:
        return "long key ids"


def key_ids(storage: EncryptedStorage, key: str) -> list[str]:
    with (storage.root / key).open("rb") as file:
        header = ObjectHeader.read(file, key)
    return [slot.key_id for slot in header.slots if slot is not None]


def read(storage: EncryptedStorage, key: str) -> bytes:
    with storage.open(key) as stream:
        return stream.read()


def only_key(key_file: Path) -> LocalKeyProvider:
    return LocalKeyProvider(read_key_file(key_file, "test"))


class TestRotateObject:
    def test_rewrapped_in_place(self, rotating: EncryptedStorage) -> None:
        key = next(iter(CONTENT))
        before = (rotating.root / key).read_bytes()
        inode = (rotating.root / key).stat().st_ino

        assert rotate_object(rotating, key) is Outcome.REWRAPPED

        after = (rotating.root / key).read_bytes()
        header_size = ObjectHeader.read(io.BytesIO(after), key).size
        assert after[header_size:] == before[header_size:]
        assert (rotating.root / key).stat().st_ino == inode
        assert key_ids(rotating, key) == [rotating.provider.current_key_id]

    def test_readable_with_new_key_alone(self, rotating: EncryptedStorage, new_key: Path) -> None:
        key = next(iter(CONTENT))
        rotate_object(rotating, key)

        new_only = EncryptedStorage(rotating.inner, only_key(new_key))

        assert read(new_only, key) == CONTENT[key]

    def test_old_key_no_longer_opens(self, rotating: EncryptedStorage, old_key: Path) -> None:
        key = next(iter(CONTENT))
        rotate_object(rotating, key)

        old_only = EncryptedStorage(rotating.inner, only_key(old_key))

        with pytest.raises(SealedObjectError, match="which is not configured"):
            old_only.open(key)

    def test_second_run_changes_nothing(self, rotating: EncryptedStorage) -> None:
        key = next(iter(CONTENT))
        rotate_object(rotating, key)
        before = (rotating.root / key).read_bytes()

        assert rotate_object(rotating, key) is Outcome.CURRENT
        assert (rotating.root / key).read_bytes() == before

    def test_interrupted_run_finished(self, rotating: EncryptedStorage) -> None:
        # A crash after the new slot was written and before the old one was cleared.
        key = next(iter(CONTENT))
        path = rotating.root / key
        header = ObjectHeader.read(io.BytesIO(path.read_bytes()), key)
        old_slot = header.slots[0]
        assert old_slot is not None
        data_key = rotating.provider.unwrap(old_slot.key_id, old_slot.wrapped)
        new_slot = KeySlot(rotating.provider.current_key_id, rotating.provider.wrap(data_key))
        with path.open("r+b") as file:
            file.seek(header.slot_offset(1))
            file.write(new_slot.encode(header.slot_size))

        assert rotate_object(rotating, key) is Outcome.REWRAPPED
        assert key_ids(rotating, key) == [rotating.provider.current_key_id]
        assert read(rotating, key) == CONTENT[key]

    def test_torn_new_slot_falls_back(self, rotating: EncryptedStorage) -> None:
        # A crash in the middle of writing the new slot: the old slot still opens.
        key = next(iter(CONTENT))
        path = rotating.root / key
        header = ObjectHeader.read(io.BytesIO(path.read_bytes()), key)
        torn = KeySlot(rotating.provider.current_key_id, os.urandom(60))
        with path.open("r+b") as file:
            file.seek(header.slot_offset(1))
            file.write(torn.encode(header.slot_size))

        assert read(rotating, key) == CONTENT[key]
        assert rotate_object(rotating, key) is Outcome.REWRAPPED
        assert read(rotating, key) == CONTENT[key]

    def test_plaintext_object_sealed(self, rotating: EncryptedStorage) -> None:
        rotating.inner.put("ff/ff/plain.dcm", [b"plain DOE^JANE"])

        assert rotate_object(rotating, "ff/ff/plain.dcm") is Outcome.SEALED

        on_disk = (rotating.root / "ff/ff/plain.dcm").read_bytes()
        assert is_sealed(on_disk)
        assert b"DOE^JANE" not in on_disk
        assert read(rotating, "ff/ff/plain.dcm") == b"plain DOE^JANE"

    def test_small_slots_resealed_whole(self, rotating: EncryptedStorage) -> None:
        key = next(iter(CONTENT))
        storage = EncryptedStorage(
            rotating.inner, LongIdProvider(rotating.provider), accept_plaintext=True
        )

        assert rotate_object(storage, key) is Outcome.SEALED
        assert key_ids(storage, key) == [LONG_KEY_ID]
        assert read(storage, key) == CONTENT[key]

    def test_missing_old_key_fails(self, data_dir: Path, new_key: Path, old_key: Path) -> None:
        storage = EncryptedStorage(FilesystemStorage(data_dir / "storage"), only_key(new_key))

        with pytest.raises(SealedObjectError, match="which is not configured"):
            rotate_object(storage, next(iter(CONTENT)))


class TestRotateStorage:
    def test_every_object_rotated(self, rotating: EncryptedStorage) -> None:
        reports = []

        report = rotate_storage(rotating, reports.append)

        assert report.counts == {Outcome.REWRAPPED: len(CONTENT)}
        assert reports[-1] is report
        assert survey_storage(rotating.inner) == {rotating.provider.current_key_id: len(CONTENT)}
        for key, data in CONTENT.items():
            assert read(rotating, key) == data

    def test_failure_listed_and_pass_goes_on(self, rotating: EncryptedStorage) -> None:
        damaged = rotating.root / "00/aa/damaged.dcm"
        damaged.write_bytes(b"\x89DVSEAL\n" + b"\xff" * 600)

        report = rotate_storage(rotating)

        assert report.counts[Outcome.FAILED] == 1
        assert report.counts[Outcome.REWRAPPED] == len(CONTENT)
        assert report.failures[0][0] == "00/aa/damaged.dcm"

    def test_finish_drops_old_key(
        self, rotating: EncryptedStorage, data_dir: Path, new_key: Path, old_key: Path
    ) -> None:
        rotate_storage(rotating)
        record = KeyRecord.load(rotating.root)
        assert record is not None

        dropped = finish_rotation(rotating, record)

        assert dropped == [only_key(old_key).current_key_id]
        reopened = open_storage(encrypted_settings(data_dir, new_key), serving=True)
        assert isinstance(reopened, EncryptedStorage)
        assert not reopened.accept_plaintext
        for key, data in CONTENT.items():
            assert read(reopened, key) == data

    def test_old_key_needed_until_finished(
        self, rotating: EncryptedStorage, data_dir: Path, new_key: Path
    ) -> None:
        rotate_storage(rotating)

        with pytest.raises(StorageSetupError, match="need master key"):
            open_storage(encrypted_settings(data_dir, new_key))

    def test_turned_on_archive_encrypted(self, tmp_path: Path, new_key: Path) -> None:
        data_dir = tmp_path / "plain-data"
        plain = open_storage(plain_settings(data_dir))
        plain.put("aa/bb/plain.dcm", [b"DOE^JANE"])
        storage = open_storage(encrypted_settings(data_dir, new_key))
        assert isinstance(storage, EncryptedStorage)

        report = rotate_storage(storage)
        record = KeyRecord.load(storage.root)
        assert record is not None
        finish_rotation(storage, record)

        assert report.counts == {Outcome.SEALED: 1}
        assert survey_storage(storage.inner) == {storage.provider.current_key_id: 1}
        assert UNENCRYPTED not in survey_storage(storage.inner)
        reopened = open_storage(encrypted_settings(data_dir, new_key))
        assert isinstance(reopened, EncryptedStorage)
        assert not reopened.accept_plaintext
        assert read(reopened, "aa/bb/plain.dcm") == b"DOE^JANE"


def s3_encrypted(
    moto_server: MotoServer, bucket: str, data_dir: Path, key_file: Path, *previous: Path
) -> EncryptedStorage:
    extra = {"encryption.enabled": True, "encryption.key_file": str(key_file)}
    if previous:
        extra["encryption.previous_key_files"] = [str(path) for path in previous]
    storage = open_storage(s3_settings(moto_server, bucket, data_dir, **extra), serving=True)
    assert isinstance(storage, EncryptedStorage)
    return storage


class TestRotateOnS3:
    """Rotation uploads each S3 object again: same segments, new header."""

    LARGE_KEY = "0l/aa/large.dcm"

    @pytest.fixture
    def rotating_s3(
        self, moto_server: MotoServer, tmp_path: Path, old_key: Path, new_key: Path
    ) -> EncryptedStorage:
        bucket = moto_server.new_bucket()
        sealing = s3_encrypted(moto_server, bucket, tmp_path / "data", old_key)
        for key, data in CONTENT.items():
            sealing.put(key, [data])
        sealing.put(self.LARGE_KEY, [LARGE])
        storage = s3_encrypted(moto_server, bucket, tmp_path / "data", new_key, old_key)
        storage.accept_plaintext = True
        return storage

    def test_objects_rewrapped_by_upload(self, rotating_s3: EncryptedStorage) -> None:
        inner = rotating_s3.inner
        before = {key: read(EncryptedStorage(inner, rotating_s3.provider), key) for key in CONTENT}
        segments = {}
        for key in [*CONTENT, self.LARGE_KEY]:
            with inner.open(key) as stream:
                whole = stream.read()
            segments[key] = whole[ObjectHeader.read(io.BytesIO(whole), key).size :]

        report = rotate_storage(rotating_s3)

        assert report.counts == {Outcome.REWRAPPED: len(CONTENT) + 1}
        current = rotating_s3.provider.current_key_id
        assert survey_storage(inner) == {current: len(CONTENT) + 1}
        for key in [*CONTENT, self.LARGE_KEY]:
            with inner.open(key) as stream:
                whole = stream.read()
            assert whole[ObjectHeader.read(io.BytesIO(whole), key).size :] == segments[key]
        for key, data in CONTENT.items():
            assert before[key] == data
            assert read(rotating_s3, key) == data
        assert read(rotating_s3, self.LARGE_KEY) == LARGE

    def test_second_run_changes_nothing(self, rotating_s3: EncryptedStorage) -> None:
        rotate_storage(rotating_s3)

        report = rotate_storage(rotating_s3)

        assert report.counts == {Outcome.CURRENT: len(CONTENT) + 1}

    def test_readable_with_new_key_alone(
        self, rotating_s3: EncryptedStorage, new_key: Path
    ) -> None:
        rotate_storage(rotating_s3)

        new_only = EncryptedStorage(rotating_s3.inner, only_key(new_key))

        assert read(new_only, self.LARGE_KEY) == LARGE

    def test_plaintext_object_sealed(self, rotating_s3: EncryptedStorage) -> None:
        rotating_s3.inner.put("ff/ff/plain.dcm", [b"plain DOE^JANE"])

        assert rotate_object(rotating_s3, "ff/ff/plain.dcm") is Outcome.SEALED
        assert is_sealed(rotating_s3.inner.read_prefix("ff/ff/plain.dcm", 16))
        assert read(rotating_s3, "ff/ff/plain.dcm") == b"plain DOE^JANE"

    def test_finish_saves_record_in_bucket(
        self, rotating_s3: EncryptedStorage, old_key: Path
    ) -> None:
        rotate_storage(rotating_s3)
        place = record_place(rotating_s3.inner)
        record = place.load()
        assert record is not None

        dropped = finish_rotation(rotating_s3, record)

        assert dropped == [only_key(old_key).current_key_id]
        saved = place.load()
        assert saved is not None
        assert list(saved.key_checks) == [rotating_s3.provider.current_key_id]
