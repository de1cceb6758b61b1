"""Key rotation: bring the data key of every stored object under the current master key.

Only the key slots of a sealed object change. In a storage folder they
change in place: the data key wrapped under the current key goes into the
free slot and is flushed to disk before the old slot is cleared. A crash
therefore leaves the object readable with the old or the new key, and the
next run finishes it. An S3 object cannot change in place, so the object
is uploaded again under the same name, with the new header and the same
encrypted segments; S3 replaces it at once when the upload ends.

Some objects are sealed again as a whole, under a new data key, and written
atomically like any stored object. These are objects stored before
encryption was turned on, and objects whose key slots are too small for the
new wrapped key.

Rotation can run beside a server that seals new objects under the same
current key.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import io
import itertools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from dicomvault.encryption.key_record import KeyRecord
from dicomvault.encryption.object_format import (
    FIXED_HEADER,
    MAGIC,
    MAX_SLOT_SIZE,
    SLOT_COUNT,
    KeySlot,
    ObjectHeader,
    SealedObjectError,
    SlotTooSmallError,
    is_sealed,
    unwrap_data_key,
)
from dicomvault.storage.encrypted import EncryptedStorage
from dicomvault.storage.filesystem import FilesystemStorage
from dicomvault.storage.setup import record_place

if TYPE_CHECKING:
    from dicomvault.storage.s3 import S3Storage

LOGGER = logging.getLogger(__name__)

COPY_CHUNK_BYTES = 1024 * 1024
PROGRESS_INTERVAL_SECONDS = 0.5
MAX_LISTED_FAILURES = 100
UNENCRYPTED = "unencrypted"
# Enough bytes for the largest header a reader accepts.
MAX_HEADER_BYTES = FIXED_HEADER.size + SLOT_COUNT * MAX_SLOT_SIZE


class Outcome(enum.StrEnum):
    """The result of rotation for one object."""

    CURRENT = "current"  # already under the current key alone; unchanged
    REWRAPPED = "rewrapped"  # key slots rewritten in place
    SEALED = "sealed"  # encrypted again as a whole under a new data key
    FAILED = "failed"


@dataclasses.dataclass
class RotationReport:
    """Counts of objects by outcome, and the first failures with their reasons."""

    counts: collections.Counter[Outcome] = dataclasses.field(default_factory=collections.Counter)
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        """The number of objects looked at."""
        return sum(self.counts.values())

    def add_failure(self, key: str, reason: str) -> None:
        """Count a failed object and keep its reason, up to MAX_LISTED_FAILURES of them."""
        self.counts[Outcome.FAILED] += 1
        if len(self.failures) < MAX_LISTED_FAILURES:
            self.failures.append((key, reason))


def rotate_object(storage: EncryptedStorage, key: str) -> Outcome:
    """Bring the object of ``key`` under the provider's current master key.

    ``storage`` must accept plaintext objects, so that old ones can be read.

    Raises
    ------
    FileNotFoundError
        If the object was deleted.
    SealedObjectError
        If the object's data key cannot be unwrapped with the configured keys.
    OSError
        If the object cannot be read or written (StorageError is one).
    """
    if isinstance(storage.inner, FilesystemStorage):
        return _rotate_file(storage, storage.inner.path_for(key), key)
    return _rotate_by_upload(storage, key)


def _rotate_file(storage: EncryptedStorage, path: Path, key: str) -> Outcome:
    """Rotate the key slots of a stored file in place."""
    provider = storage.provider
    with path.open("r+b", buffering=0) as file:
        if not is_sealed(file.read(len(MAGIC))):
            _reseal(storage, key)
            return Outcome.SEALED
        header = ObjectHeader.read(file, key)
        data_key, used = unwrap_data_key(header, provider, key)
        used_slot = header.slots[used]
        free = 1 - used
        assert used_slot is not None
        if used_slot.key_id == provider.current_key_id:
            if header.slots[free] is None:
                return Outcome.CURRENT
            # An earlier run stopped before it cleared the old slot.
            _write_slot(file, header, free, b"\0" * header.slot_size)
            return Outcome.REWRAPPED
        try:
            encoded = KeySlot(provider.current_key_id, provider.wrap(data_key)).encode(
                header.slot_size
            )
        except SlotTooSmallError:
            _reseal(storage, key)
            return Outcome.SEALED
        _write_slot(file, header, free, encoded)
        _write_slot(file, header, used, b"\0" * header.slot_size)
        return Outcome.REWRAPPED


def _rotate_by_upload(storage: EncryptedStorage, key: str) -> Outcome:
    """Upload an S3 object again with a header whose only key slot is the current key's.

    The encrypted segments are copied unchanged, so the data key stays the
    same, and only the header's bytes differ.
    """
    provider = storage.provider
    inner: S3Storage = storage.inner  # type: ignore[assignment]
    head = inner.read_prefix(key, MAX_HEADER_BYTES)
    if not is_sealed(head[: len(MAGIC)]):
        _reseal(storage, key)
        return Outcome.SEALED
    header = ObjectHeader.read(io.BytesIO(head), key)
    data_key, used = unwrap_data_key(header, provider, key)
    used_slot = header.slots[used]
    assert used_slot is not None
    if used_slot.key_id == provider.current_key_id:
        if header.slots[1 - used] is None:
            return Outcome.CURRENT
        slot = used_slot
    else:
        slot = KeySlot(provider.current_key_id, provider.wrap(data_key))
    try:
        new_header = dataclasses.replace(header, slots=(slot, None)).encode()
    except SlotTooSmallError:
        _reseal(storage, key)
        return Outcome.SEALED
    # NOTE: a server may delete the object while this runs. The upload then
    # puts it back without an index entry, and fsck lists it as an orphan.
    with inner.open(key) as stream:
        stream.seek(header.size)
        segments = iter(lambda: stream.read(COPY_CHUNK_BYTES), b"")
        inner.put(key, itertools.chain([new_header], segments))
    return Outcome.REWRAPPED


def _write_slot(file: BinaryIO, header: ObjectHeader, index: int, data: bytes) -> None:
    """Write key slot ``index`` and flush it to disk before returning."""
    fd = file.fileno()
    written = os.pwrite(fd, data, header.slot_offset(index))
    if written != len(data):
        raise OSError(f"short write of key slot {index}: {written} of {len(data)} bytes")
    os.fsync(fd)


def _reseal(storage: EncryptedStorage, key: str) -> None:
    """Encrypt the object again as a whole, under a new data key, replacing it atomically."""
    # NOTE: if a server deletes the object while this runs, the write puts it
    # back as a file that no index entry references.
    with storage.open(key) as stream:
        storage.put(key, iter(lambda: stream.read(COPY_CHUNK_BYTES), b""))


def rotate_storage(
    storage: EncryptedStorage, on_progress: Callable[[RotationReport], None] | None = None
) -> RotationReport:
    """Rotate every stored object; return the counts. One failure does not stop the pass.

    ``on_progress`` is called with the report about twice a second and at the end.
    """
    report = RotationReport()
    last_progress = time.monotonic()
    for key in storage.inner.iter_keys():
        try:
            outcome = rotate_object(storage, key)
        except FileNotFoundError:
            continue  # deleted since the folder was listed
        except OSError as exc:  # SealedObjectError is an OSError
            LOGGER.error("Cannot rotate the key of stored object %s: %s", key, exc)
            report.add_failure(key, str(exc))
        else:
            report.counts[outcome] += 1
            if outcome is not Outcome.CURRENT:
                LOGGER.debug("Object %s %s under the current key", key, outcome)
        now = time.monotonic()
        if on_progress is not None and now - last_progress >= PROGRESS_INTERVAL_SECONDS:
            on_progress(report)
            last_progress = now
    if on_progress is not None:
        on_progress(report)
    return report


def finish_rotation(storage: EncryptedStorage, record: KeyRecord) -> list[str]:
    """Record that every object is sealed under the current key; return the key ids dropped.

    Call only after :func:`rotate_storage` reported no failure.
    """
    current = storage.provider.current_key_id
    dropped = sorted(key_id for key_id in record.key_checks if key_id != current)
    for key_id in dropped:
        del record.key_checks[key_id]
    if current not in record.key_checks:
        record.add_key(storage.provider)
    record.plaintext_objects = False
    record_place(storage.inner).save(record)
    storage.accept_plaintext = False
    return dropped


def survey_storage(
    inner: FilesystemStorage | S3Storage, on_progress: Callable[[int], None] | None = None
) -> collections.Counter[str]:
    """Count the stored objects by the master keys in their headers, without decrypting.

    The keys of an object with two filled slots are joined with ' + '. An
    object without the sealed header counts as UNENCRYPTED, and one with a
    damaged header as 'damaged'.
    """
    counts: collections.Counter[str] = collections.Counter()
    last_progress = time.monotonic()
    for key in inner.iter_keys():
        counts[_key_ids_of(inner, key)] += 1
        now = time.monotonic()
        if on_progress is not None and now - last_progress >= PROGRESS_INTERVAL_SECONDS:
            on_progress(sum(counts.values()))
            last_progress = now
    return counts


def _key_ids_of(inner: FilesystemStorage | S3Storage, key: str) -> str:
    try:
        head = inner.read_prefix(key, MAX_HEADER_BYTES)
        if not is_sealed(head[: len(MAGIC)]):
            return UNENCRYPTED
        header = ObjectHeader.read(io.BytesIO(head), key)
    except FileNotFoundError:
        return "deleted while counted"
    except (SealedObjectError, OSError):
        return "damaged"
    return " + ".join(slot.key_id for slot in header.slots if slot is not None) or "damaged"
