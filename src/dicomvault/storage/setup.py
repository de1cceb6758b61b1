"""Open the archive's storage as configured, after checking the encryption keys.

Every command that reads or writes stored objects opens the storage here, so
that a missing or wrong master key, or encrypted objects with encryption
turned off, stop the command with one clear message before it serves or
writes anything.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

from dicomvault.config import Settings
from dicomvault.encryption.key_record import KeyRecord, KeyRecordError
from dicomvault.encryption.keys import KeyProvider, KeySetupError, load_key_provider
from dicomvault.encryption.object_format import (
    MAGIC,
    ObjectHeader,
    SealedObjectError,
    is_sealed,
    unwrap_data_key,
)
from dicomvault.storage.encrypted import EncryptedStorage
from dicomvault.storage.filesystem import FilesystemStorage

LOGGER = logging.getLogger(__name__)

STORAGE_FOLDER = "storage"
# Objects whose headers are checked when the key record is missing.
SAMPLE_OBJECTS = 20


class StorageSetupError(RuntimeError):
    """The storage cannot be opened with the configured settings; the message gives the reason."""


def open_storage(settings: Settings, serving: bool = False) -> FilesystemStorage | EncryptedStorage:
    """Open the storage folder of the data directory, encrypted when encryption is on.

    With encryption on, the key record is created or checked, and the
    current key is added to it. The record of a storage folder without
    objects is removed, so that another key, or no encryption, can start
    afresh there. ``serving`` marks the caller that holds the
    data directory lock: the record then names its current key as the one
    new objects are sealed under, which ``dicomvault keys rotate`` checks.

    Raises
    ------
    StorageSetupError
        If the folder cannot be created, a key setting is invalid, the
        configured keys do not match the key record or the sampled objects,
        or encryption is off while stored objects are encrypted.
    """
    root = settings.data_dir / STORAGE_FOLDER
    try:
        inner = FilesystemStorage(root)
        record = KeyRecord.load(root)
    except OSError as exc:
        raise StorageSetupError(
            f"Cannot use data directory {settings.data_dir}: {exc.strerror or exc}"
        ) from None
    except KeyRecordError as exc:
        raise StorageSetupError(str(exc)) from None
    if record is not None and not _sample(inner):
        # No stored object needs a key, so the record of an earlier setup is obsolete.
        LOGGER.info("Storage %s has no objects, so its key record is started anew", root)
        KeyRecord.path(root).unlink(missing_ok=True)
        record = None

    if not settings.encryption.enabled:
        _check_no_sealed_objects(inner, record)
        return inner

    try:
        provider = load_key_provider(settings.encryption)
    except KeySetupError as exc:
        raise StorageSetupError(str(exc)) from None
    if record is None:
        record = _new_record(inner, provider)
        changed = True
    else:
        try:
            record.verify(provider, root)
        except KeyRecordError as exc:
            raise StorageSetupError(str(exc)) from None
        changed = False
    if provider.current_key_id not in record.key_checks:
        record.add_key(provider)
        changed = True
    if serving and record.current_key_id != provider.current_key_id:
        record.current_key_id = provider.current_key_id
        changed = True
    if changed:
        try:
            record.save(root)
        except OSError as exc:
            raise StorageSetupError(
                f"Cannot write the key record {KeyRecord.path(root)}: {exc.strerror or exc}"
            ) from None

    _log_keys(provider, record)
    return EncryptedStorage(inner, provider, accept_plaintext=record.plaintext_objects)


def _check_no_sealed_objects(inner: FilesystemStorage, record: KeyRecord | None) -> None:
    """Raise StorageSetupError if encryption is off and stored objects are encrypted."""
    if record is not None and record.key_checks:
        evidence = f"the key record {KeyRecord.path(inner.root)} lists their master keys"
    elif record is None and any(is_sealed(_prefix(inner.root / key)) for key in _sample(inner)):
        evidence = "their headers show it"
    else:
        return
    raise StorageSetupError(
        f"Encryption is off (encryption.enabled is false), but the stored files in "
        f"{inner.root} are encrypted ({evidence}). Set encryption.enabled = true and the "
        "archive's master key in encryption.key_file or DICOMVAULT_ENCRYPTION_KEY"
    )


def _new_record(inner: FilesystemStorage, provider: KeyProvider) -> KeyRecord:
    """Return the record of a storage folder that has none: empty, or written without encryption.

    Sampled objects that are already sealed must open with the configured
    keys. That catches a wrong key when the record was lost.

    Raises
    ------
    StorageSetupError
        If a sampled sealed object needs a key that is missing or wrong.
    """
    sample = _sample(inner)
    for key in sample:
        path = inner.root / key
        if not is_sealed(_prefix(path)):
            continue
        try:
            with path.open("rb") as file:
                unwrap_data_key(ObjectHeader.read(file, key), provider, key)
        except SealedObjectError as exc:
            raise StorageSetupError(
                f"{exc}. The key record {KeyRecord.path(inner.root)} is missing, so the "
                "stored objects were checked instead"
            ) from None
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
            inner.root,
        )
    return record


def _sample(inner: FilesystemStorage) -> list[str]:
    return list(itertools.islice(inner.iter_keys(), SAMPLE_OBJECTS))


def _prefix(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            return file.read(len(MAGIC))
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
