"""Open the archive's storage as configured, after checking the bucket and the encryption keys.

Every command that reads or writes stored objects opens the storage here.
A bucket that cannot be used, a missing or wrong master key, or encrypted
objects with encryption turned off then stop the command with one clear
message before it serves or writes anything.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from dicomvault.config import Settings
from dicomvault.encryption.key_record import RECORD_NAME, KeyRecord, KeyRecordError
from dicomvault.encryption.keys import (
    KeyProvider,
    KeyServiceError,
    KeySetupError,
    load_key_provider,
)
from dicomvault.encryption.object_format import (
    MAGIC,
    ObjectHeader,
    SealedObjectError,
    is_sealed,
    unwrap_data_key,
)
from dicomvault.storage.base import StorageError
from dicomvault.storage.encrypted import EncryptedStorage
from dicomvault.storage.filesystem import FilesystemStorage

if TYPE_CHECKING:
    from dicomvault.storage.s3 import S3Storage

LOGGER = logging.getLogger(__name__)

STORAGE_FOLDER = "storage"
# Objects whose headers are checked when the key record is missing.
SAMPLE_OBJECTS = 20


class StorageSetupError(RuntimeError):
    """The storage cannot be opened with the configured settings; the message gives the reason."""


def open_storage(
    settings: Settings, serving: bool = False
) -> FilesystemStorage | S3Storage | EncryptedStorage:
    """Open the configured storage, encrypted when encryption is on.

    Filesystem storage is the folder ``storage`` of the data directory; it
    reads objects indexed in place in a bucket with the S3 endpoint, region
    and retry settings. S3 storage is the configured bucket and prefix; the
    bucket must exist and the credentials must allow access to it.

    With encryption on, the key record is created or checked, and the
    current key is added to it. The record of a storage without
    objects is removed, so that another key, or no encryption, can start
    afresh there. ``serving`` marks the caller that holds the
    data directory lock: the record then names its current key as the one
    new objects are sealed under, which ``dicomvault keys rotate`` checks.

    Raises
    ------
    StorageSetupError
        If the folder cannot be created, the bucket cannot be used, a key
        setting is invalid, the configured keys do not match the key
        record or the sampled objects, or encryption is off while stored
        objects are encrypted.
    """
    inner = open_inner_storage(settings)
    place = record_place(inner)
    try:
        record = place.load()
        if record is not None and not _sample(inner):
            # No stored object needs a key, so the record of an earlier setup is obsolete.
            LOGGER.info("Storage %s has no objects, so its key record is started anew", place)
            place.remove()
            record = None
    except KeyRecordError as exc:
        raise StorageSetupError(str(exc)) from None
    except OSError as exc:
        raise StorageSetupError(
            f"Cannot use storage {inner.location}: {exc.strerror or exc}"
        ) from None

    if not settings.encryption.enabled:
        _check_no_sealed_objects(inner, record, place)
        return inner

    try:
        provider = load_key_provider(settings.encryption)
    except KeySetupError as exc:
        raise StorageSetupError(str(exc)) from None
    try:
        if record is None:
            record = _new_record(inner, provider, place)
            changed = True
        else:
            record.verify(provider, inner.location, str(place))
            changed = False
        if provider.current_key_id not in record.key_checks:
            record.add_key(provider)
            changed = True
    except (KeyRecordError, KeyServiceError) as exc:
        # A key service that fails here would fail every store and read too.
        raise StorageSetupError(str(exc)) from None
    if serving and record.current_key_id != provider.current_key_id:
        record.current_key_id = provider.current_key_id
        changed = True
    if changed:
        try:
            place.save(record)
        except OSError as exc:
            raise StorageSetupError(
                f"Cannot write the key record {place}: {exc.strerror or exc}"
            ) from None

    _log_keys(provider, record)
    return EncryptedStorage(inner, provider, accept_plaintext=record.plaintext_objects)


def open_inner_storage(settings: Settings) -> FilesystemStorage | S3Storage:
    """Open the storage of stored files, without encryption.

    Raises
    ------
    StorageSetupError
        If the folder cannot be created, or the bucket cannot be used.
    """
    if settings.storage.backend == "s3":
        # Imported here: boto3 takes a noticeable time to import, which
        # commands on filesystem storage need not pay.
        from dicomvault.storage.s3 import S3Storage

        storage = S3Storage(settings.storage)
        try:
            storage.check_bucket()
        except StorageError as exc:
            raise StorageSetupError(str(exc)) from None
        return storage
    try:
        return FilesystemStorage(settings.data_dir / STORAGE_FOLDER, settings.storage)
    except OSError as exc:
        raise StorageSetupError(
            f"Cannot use data directory {settings.data_dir}: {exc.strerror or exc}"
        ) from None


class _FileRecordPlace:
    """The key record as the file ``.encryption.json`` of a storage folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __str__(self) -> str:
        return str(KeyRecord.path(self.root))

    def load(self) -> KeyRecord | None:
        return KeyRecord.load(self.root)

    def save(self, record: KeyRecord) -> None:
        record.save(self.root)

    def remove(self) -> None:
        KeyRecord.path(self.root).unlink(missing_ok=True)


class _ObjectRecordPlace:
    """The key record as the object ``.encryption.json`` under the prefix of S3 storage."""

    def __init__(self, storage: S3Storage) -> None:
        self.storage = storage

    def __str__(self) -> str:
        return self.storage.reserved_location(RECORD_NAME)

    def load(self) -> KeyRecord | None:
        data = self.storage.read_reserved(RECORD_NAME)
        return None if data is None else KeyRecord.parse(data, str(self))

    def save(self, record: KeyRecord) -> None:
        self.storage.write_reserved(RECORD_NAME, record.encode())
        LOGGER.info("Saved the key record %s", self)

    def remove(self) -> None:
        self.storage.delete_reserved(RECORD_NAME)


def record_place(inner: FilesystemStorage | S3Storage) -> _FileRecordPlace | _ObjectRecordPlace:
    """Return where the key record of ``inner`` is kept: a file of the folder, or an object."""
    if isinstance(inner, FilesystemStorage):
        return _FileRecordPlace(inner.root)
    return _ObjectRecordPlace(inner)


def _check_no_sealed_objects(
    inner: FilesystemStorage | S3Storage,
    record: KeyRecord | None,
    place: _FileRecordPlace | _ObjectRecordPlace,
) -> None:
    """Raise StorageSetupError if encryption is off and stored objects are encrypted."""
    if record is not None and record.key_checks:
        evidence = f"the key record {place} lists their master keys"
    elif record is None and any(is_sealed(_prefix(inner, key)) for key in _sample(inner)):
        evidence = "their headers show it"
    else:
        return
    raise StorageSetupError(
        f"Encryption is off (encryption.enabled is false), but the stored files in "
        f"{inner.location} are encrypted ({evidence}). Set encryption.enabled = true and the "
        "archive's master key in encryption.key_file or DICOMVAULT_ENCRYPTION_KEY, or in "
        'encryption.kms_key_id with encryption.provider = "aws-kms"'
    )


def _new_record(
    inner: FilesystemStorage | S3Storage,
    provider: KeyProvider,
    place: _FileRecordPlace | _ObjectRecordPlace,
) -> KeyRecord:
    """Return the record of a storage that has none: empty, or written without encryption.

    Sampled objects that are already sealed must open with the configured
    keys. That catches a wrong key when the record was lost.

    Raises
    ------
    StorageSetupError
        If a sampled sealed object needs a key that is missing or wrong.
    """
    sample = _sample(inner)
    for key in sample:
        if not is_sealed(_prefix(inner, key)):
            continue
        try:
            with inner.open(key) as file:
                unwrap_data_key(ObjectHeader.read(file, key), provider, key)
        except SealedObjectError as exc:
            raise StorageSetupError(
                f"{exc}. The key record {place} is missing, so the "
                "stored objects were checked instead"
            ) from None
        except KeyServiceError as exc:
            raise StorageSetupError(str(exc)) from None
        except OSError as exc:
            raise StorageSetupError(f"Cannot read stored object {key}: {exc}") from None
    record = KeyRecord()
    # Until `dicomvault keys rotate` has looked at every object, any of them
    # may predate encryption, or need an earlier key that the new record
    # does not list.
    record.plaintext_objects = bool(sample)
    if sample:
        LOGGER.warning(
            "Storage %s has objects but no key record, so encryption was just turned on or "
            "the record was lost. Unencrypted objects are read as they are; run 'dicomvault "
            "keys rotate' to encrypt them and to bring every object under the current key",
            inner.location,
        )
    return record


def _sample(inner: FilesystemStorage | S3Storage) -> list[str]:
    """Return the keys of up to SAMPLE_OBJECTS stored objects.

    Raises
    ------
    StorageSetupError
        If the bucket cannot be listed.
    """
    try:
        return list(itertools.islice(inner.iter_keys(), SAMPLE_OBJECTS))
    except StorageError as exc:
        raise StorageSetupError(str(exc)) from None


def _prefix(inner: FilesystemStorage | S3Storage, key: str) -> bytes:
    try:
        if isinstance(inner, FilesystemStorage):
            with inner.path_for(key).open("rb") as file:
                return file.read(len(MAGIC))
        return inner.read_prefix(key, len(MAGIC))
    except OSError:
        return b""


def _log_keys(provider: KeyProvider, record: KeyRecord) -> None:
    LOGGER.info(
        "Encryption at rest is on: new objects are sealed under master key %s",
        provider.current_key_id,
    )
    for key_id in provider.key_ids[1:]:
        if key_id not in record.key_checks:
            LOGGER.info(
                "Earlier master key %s is configured, but the key record lists no stored "
                "object that needs it; it can be removed from the settings",
                key_id,
            )
    if record.plaintext_objects:
        LOGGER.warning(
            "Objects stored before encryption was turned on may be unencrypted; run "
            "'dicomvault keys rotate' to encrypt them"
        )
