"""Unit tests for encrypted storage and the key checks made when storage is opened."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicomvault.config import Settings, load_settings
from dicomvault.encryption.key_record import RECORD_NAME, KeyRecord
from dicomvault.encryption.keys import generate_key_file
from dicomvault.encryption.object_format import SealedObjectError, is_sealed
from dicomvault.ingest.reader import FileJob, Mode, Outcome, ReadOptions, read_file
from dicomvault.storage.encrypted import EncryptedStorage
from dicomvault.storage.filesystem import FilesystemStorage
from dicomvault.storage.in_place import in_place_key
from dicomvault.storage.setup import StorageSetupError, open_storage
from tests.support.corpus import PYDICOM_TEST_FILES

KEY = "ab/cd/abcdef.dcm"
PLAINTEXT = b"\0" * 128 + b"DICM" + b"DOE^JANE " * 20_000


def encrypted_settings(data_dir: Path, key_file: Path, *previous: Path, **extra: Any) -> Settings:
    environ = {
        "DICOMVAULT_ENCRYPTION_ENABLED": "true",
        "DICOMVAULT_ENCRYPTION_KEY_FILE": str(key_file),
    }
    if previous:
        environ["DICOMVAULT_ENCRYPTION_PREVIOUS_KEY_FILES"] = os.pathsep.join(map(str, previous))
    return load_settings(environ=environ, overrides={"storage.data_dir": str(data_dir), **extra})


def plain_settings(data_dir: Path) -> Settings:
    return load_settings(environ={}, overrides={"storage.data_dir": str(data_dir)})


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "current.key"
    generate_key_file(path)
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def storage(data_dir: Path, key_file: Path) -> EncryptedStorage:
    opened = open_storage(encrypted_settings(data_dir, key_file), serving=True)
    assert isinstance(opened, EncryptedStorage)
    return opened


class TestEncryptedStorage:
    def test_round_trip(self, storage: EncryptedStorage) -> None:
        size = storage.put(KEY, [PLAINTEXT[:1000], PLAINTEXT[1000:]])

        assert size == len(PLAINTEXT)
        with storage.open(KEY) as stream:
            assert stream.read() == PLAINTEXT
            stream.seek(128)
            assert stream.read(4) == b"DICM"

    def test_file_on_disk_sealed(self, storage: EncryptedStorage) -> None:
        storage.put(KEY, [PLAINTEXT])

        on_disk = (storage.root / KEY).read_bytes()
        assert is_sealed(on_disk)
        assert b"DOE^JANE" not in on_disk
        assert b"DICM" not in on_disk

    def test_no_plain_path(self, storage: EncryptedStorage) -> None:
        storage.put(KEY, [PLAINTEXT])

        assert storage.plain_path(KEY) is None

    def test_in_place_file_read_as_is(self, storage: EncryptedStorage, tmp_path: Path) -> None:
        path = tmp_path / "in-place.dcm"
        path.write_bytes(PLAINTEXT)
        key = in_place_key(path)

        with storage.open(key) as stream:
            assert stream.read() == PLAINTEXT
        assert storage.plain_path(key) == path
        with pytest.raises(ValueError, match="in-place files are never modified"):
            storage.put(key, [b"x"])

    def test_plaintext_object_rejected(self, storage: EncryptedStorage) -> None:
        storage.inner.put(KEY, [PLAINTEXT])

        with pytest.raises(SealedObjectError, match=f"Stored object {KEY} is not encrypted"):
            storage.open(KEY)

    def test_plaintext_object_read_while_accepted(self, storage: EncryptedStorage) -> None:
        storage.inner.put(KEY, [PLAINTEXT])
        storage.accept_plaintext = True

        with storage.open(KEY) as stream:
            assert stream.read() == PLAINTEXT

    def test_describe_names_key_id_only(self, storage: EncryptedStorage, key_file: Path) -> None:
        description = storage.describe()

        assert storage.provider.current_key_id in description
        assert key_file.read_text().strip() not in description


class TestOpenStorage:
    def test_plain_storage_without_encryption(self, data_dir: Path) -> None:
        opened = open_storage(plain_settings(data_dir))

        assert type(opened) is FilesystemStorage
        assert not (data_dir / "storage" / RECORD_NAME).exists()

    def test_record_created(self, storage: EncryptedStorage) -> None:
        record = json.loads((storage.root / RECORD_NAME).read_text())

        assert record["current_key_id"] == storage.provider.current_key_id
        assert list(record["key_checks"]) == [storage.provider.current_key_id]
        assert record["plaintext_objects"] is False

    def test_record_has_no_key_material(self, storage: EncryptedStorage, key_file: Path) -> None:
        text = (storage.root / RECORD_NAME).read_text()

        assert key_file.read_text().strip() not in text

    def test_wrong_key_stops(self, storage: EncryptedStorage, data_dir: Path) -> None:
        storage.put(KEY, [PLAINTEXT])
        other = data_dir.parent / "other.key"
        other_id = generate_key_file(other)

        with pytest.raises(StorageSetupError) as raised:
            open_storage(encrypted_settings(data_dir, other), serving=True)

        assert str(raised.value) == (
            f"The stored files in {storage.root} need master key "
            f"{storage.provider.current_key_id}, and the configured keys are {other_id}. "
            "Set encryption.key_file (or DICOMVAULT_ENCRYPTION_KEY) to the archive's key; "
            "while keys are being rotated, list the earlier key in "
            "encryption.previous_key_files (or DICOMVAULT_ENCRYPTION_PREVIOUS_KEYS)"
        )

    def test_missing_key_file_stops(self, data_dir: Path, tmp_path: Path) -> None:
        missing = tmp_path / "gone.key"

        with pytest.raises(StorageSetupError, match=f"Key file {missing} .* not found"):
            open_storage(encrypted_settings(data_dir, missing))

    def test_same_id_wrong_material_stops(self, storage: EncryptedStorage, data_dir: Path) -> None:
        storage.put(KEY, [PLAINTEXT])
        record = KeyRecord.load(storage.root)
        assert record is not None
        record.key_checks[storage.provider.current_key_id] = (
            record.key_checks[storage.provider.current_key_id][:-8] + "AAAAAAA="
        )
        record.save(storage.root)

        with pytest.raises(StorageSetupError, match="does not open its check in the key record"):
            open_storage(encrypted_settings(data_dir, data_dir.parent / "current.key"))

    def test_record_of_empty_storage_removed(
        self, storage: EncryptedStorage, data_dir: Path
    ) -> None:
        opened = open_storage(plain_settings(data_dir))

        assert type(opened) is FilesystemStorage
        assert not (storage.root / RECORD_NAME).exists()

    def test_other_key_on_empty_storage(self, storage: EncryptedStorage, data_dir: Path) -> None:
        other = data_dir.parent / "other.key"
        other_id = generate_key_file(other)

        opened = open_storage(encrypted_settings(data_dir, other), serving=True)

        record = KeyRecord.load(opened.root)
        assert record is not None
        assert list(record.key_checks) == [other_id]

    def test_encryption_off_with_record_stops(
        self, storage: EncryptedStorage, data_dir: Path
    ) -> None:
        storage.put(KEY, [PLAINTEXT])

        with pytest.raises(StorageSetupError, match=r"Encryption is off \(encryption.enabled"):
            open_storage(plain_settings(data_dir))

    def test_encryption_off_with_sealed_objects_stops(
        self, storage: EncryptedStorage, data_dir: Path
    ) -> None:
        storage.put(KEY, [PLAINTEXT])
        (storage.root / RECORD_NAME).unlink()

        with pytest.raises(StorageSetupError, match="their headers show it"):
            open_storage(plain_settings(data_dir))

    def test_lost_record_and_wrong_key_stops(
        self, storage: EncryptedStorage, data_dir: Path
    ) -> None:
        storage.put(KEY, [PLAINTEXT])
        (storage.root / RECORD_NAME).unlink()
        other = data_dir.parent / "other.key"
        generate_key_file(other)

        with pytest.raises(StorageSetupError, match=r"The key record .* is missing"):
            open_storage(encrypted_settings(data_dir, other))

    def test_turning_encryption_on_accepts_old_objects(
        self, data_dir: Path, key_file: Path
    ) -> None:
        plain = open_storage(plain_settings(data_dir))
        plain.put(KEY, [PLAINTEXT])

        opened = open_storage(encrypted_settings(data_dir, key_file))

        assert isinstance(opened, EncryptedStorage)
        assert opened.accept_plaintext
        with opened.open(KEY) as stream:
            assert stream.read() == PLAINTEXT

    def test_new_current_key_added(
        self, storage: EncryptedStorage, data_dir: Path, key_file: Path
    ) -> None:
        storage.put(KEY, [PLAINTEXT])
        new = data_dir.parent / "new.key"
        new_id = generate_key_file(new)

        opened = open_storage(encrypted_settings(data_dir, new, key_file), serving=True)

        record = KeyRecord.load(opened.root)
        assert record is not None
        assert set(record.key_checks) == {storage.provider.current_key_id, new_id}
        assert record.current_key_id == new_id

    def test_only_serving_sets_current_key(
        self, storage: EncryptedStorage, data_dir: Path, key_file: Path
    ) -> None:
        storage.put(KEY, [PLAINTEXT])
        new = data_dir.parent / "new.key"
        generate_key_file(new)

        open_storage(encrypted_settings(data_dir, new, key_file))

        record = KeyRecord.load(storage.root)
        assert record is not None
        assert record.current_key_id == storage.provider.current_key_id


def test_import_copies_encrypted(data_dir: Path, key_file: Path) -> None:
    settings = encrypted_settings(data_dir, key_file)
    storage = open_storage(settings)
    assert isinstance(storage, EncryptedStorage)
    source = PYDICOM_TEST_FILES / "CT_small.dcm"
    status = source.stat()
    options = ReadOptions(Mode.IMPORT, str(storage.root), settings.encryption)

    result = read_file(FileJob(str(source), status.st_size, status.st_mtime_ns), options)

    assert result.outcome is Outcome.INSTANCE, result.reason
    on_disk = (storage.root / result.storage_key).read_bytes()
    assert is_sealed(on_disk)
    assert b"CompressedSamples^CT1" not in on_disk
    with storage.open(result.storage_key) as stream:
        copy = pydicom.dcmread(stream)
    original = pydicom.dcmread(source)
    assert copy.PatientName == original.PatientName
    assert copy.PixelData == original.PixelData
