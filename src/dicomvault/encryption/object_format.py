"""The sealed object format: a stored file encrypted with AES-256-GCM in segments.

Layout, integers big endian::

    fixed header (24 bytes)   magic (8), format version (1), cipher (1),
                              segment size (4), key slot size (2),
                              nonce prefix (7), reserved zero byte (1)
    two key slots             each: key id length (1), key id (ASCII),
                              wrapped data key length (2), wrapped data key,
                              zero padding to the slot size; an unused slot
                              is all zeros
    segments                  the ciphertext of ``segment size`` plaintext
                              bytes (the last segment fewer, possibly none),
                              each followed by its 16-byte tag

Segment ``i`` is sealed under the object's data key with the 12-byte nonce
``nonce prefix || i (4 bytes) || 1 if it is the last segment else 0`` and the
fixed header as associated data. A segment moved to another position, a file
cut at a segment boundary, or a changed fixed header therefore fails
authentication, and a reader never returns bytes that did not authenticate.

The segments do not authenticate the key slots, because key rotation
rewrites them in place. Each wrapped data key authenticates itself under its
master key instead. With two slots, rotation writes the new wrapped key
beside the old one, so a crash during the write leaves one intact slot.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dicomvault.encryption.keys import KEY_BYTES, KeyProvider, UnknownKeyError, UnwrapError
from dicomvault.storage.base import SizedReader, StorageError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

MAGIC = b"\x89DVSEAL\n"
FORMAT_VERSION = 1
CIPHER_AES_256_GCM = 1
FIXED_HEADER = struct.Struct(">8sBBIH7sx")
SLOT_COUNT = 2
TAG_BYTES = 16
NONCE_PREFIX_BYTES = 7
DEFAULT_SEGMENT_SIZE = 64 * 1024
DEFAULT_SLOT_SIZE = 256
# Bounds a reader accepts, so that a damaged header cannot demand huge buffers.
MAX_SEGMENT_SIZE = 16 * 1024 * 1024
MIN_SLOT_SIZE, MAX_SLOT_SIZE = 64, 4096
MAX_SEGMENTS = 2**32  # the segment index has 4 bytes in the nonce


class SealedObjectError(StorageError):
    """A sealed object cannot be read.

    Its header is invalid, its master key is not configured, or a segment
    fails authentication. The message names the object and the fix.
    """


class SlotTooSmallError(ValueError):
    """A key id and wrapped data key do not fit the key slots of an object."""


@dataclasses.dataclass(frozen=True)
class KeySlot:
    """A data key wrapped under the master key ``key_id``."""

    key_id: str
    wrapped: bytes

    def encode(self, slot_size: int) -> bytes:
        """Return the slot as ``slot_size`` bytes.

        Raises
        ------
        SlotTooSmallError
            If the key id and wrapped key need more than ``slot_size`` bytes.
        """
        key_id = self.key_id.encode("ascii")
        body = bytes([len(key_id)]) + key_id + len(self.wrapped).to_bytes(2, "big") + self.wrapped
        if len(key_id) > 255 or len(body) > slot_size:
            raise SlotTooSmallError(
                f"the wrapped data key of master key {self.key_id} needs {len(body)} bytes, "
                f"and the key slots have {slot_size}"
            )
        return body.ljust(slot_size, b"\0")

    @classmethod
    def decode(cls, data: bytes) -> KeySlot | None:
        """Return the slot encoded in ``data``, or None for an unused slot.

        Raises
        ------
        ValueError
            If the lengths in the slot run past its end.
        """
        id_length = data[0]
        if id_length == 0:
            return None
        wrapped_at = 1 + id_length + 2
        if wrapped_at > len(data):
            raise ValueError("the key id runs past the end of its slot")
        wrapped_length = int.from_bytes(data[wrapped_at - 2 : wrapped_at], "big")
        if wrapped_at + wrapped_length > len(data):
            raise ValueError("the wrapped data key runs past the end of its slot")
        key_id = data[1 : 1 + id_length].decode("ascii")
        return cls(key_id, bytes(data[wrapped_at : wrapped_at + wrapped_length]))


@dataclasses.dataclass(frozen=True)
class ObjectHeader:
    """The header of a sealed object: cipher parameters and the two key slots."""

    segment_size: int
    slot_size: int
    nonce_prefix: bytes
    slots: tuple[KeySlot | None, KeySlot | None]

    @property
    def fixed(self) -> bytes:
        """The fixed part of the header, which every segment authenticates."""
        return FIXED_HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            CIPHER_AES_256_GCM,
            self.segment_size,
            self.slot_size,
            self.nonce_prefix,
        )

    @property
    def size(self) -> int:
        """The size of the whole header in bytes; the first segment starts there."""
        return FIXED_HEADER.size + SLOT_COUNT * self.slot_size

    def slot_offset(self, index: int) -> int:
        """Return the byte offset of key slot ``index`` (0 or 1) in the file."""
        return FIXED_HEADER.size + index * self.slot_size

    def encode(self) -> bytes:
        """Return the header bytes.

        Raises
        ------
        SlotTooSmallError
            If a slot does not fit ``slot_size``.
        """
        slots = b"".join(
            b"\0" * self.slot_size if slot is None else slot.encode(self.slot_size)
            for slot in self.slots
        )
        return self.fixed + slots

    @classmethod
    def read(cls, file: BinaryIO, name: str) -> ObjectHeader:
        """Read the header at the start of ``file``; ``name`` identifies the object in errors.

        Raises
        ------
        SealedObjectError
            If the file does not start with a valid header of this format.
        """
        file.seek(0)
        fixed = _read_exactly(file, FIXED_HEADER.size)
        if len(fixed) < FIXED_HEADER.size or fixed[: len(MAGIC)] != MAGIC:
            raise SealedObjectError(f"Stored object {name} is not an encrypted object")
        _, version, cipher, segment_size, slot_size, nonce_prefix = FIXED_HEADER.unpack(fixed)
        if version != FORMAT_VERSION or cipher != CIPHER_AES_256_GCM:
            raise SealedObjectError(
                f"Encrypted object {name} has format version {version} and cipher {cipher}; "
                f"this version of dicomvault reads version {FORMAT_VERSION} with cipher "
                f"{CIPHER_AES_256_GCM} (AES-256-GCM) only"
            )
        if not 1 <= segment_size <= MAX_SEGMENT_SIZE or not (
            MIN_SLOT_SIZE <= slot_size <= MAX_SLOT_SIZE
        ):
            raise SealedObjectError(
                f"Encrypted object {name} has an invalid header (segment size {segment_size}, "
                f"slot size {slot_size}); the file is damaged"
            )
        raw_slots = _read_exactly(file, SLOT_COUNT * slot_size)
        if len(raw_slots) < SLOT_COUNT * slot_size:
            raise SealedObjectError(f"Encrypted object {name} ends inside its header")
        try:
            first = KeySlot.decode(raw_slots[:slot_size])
            second = KeySlot.decode(raw_slots[slot_size:])
        except (ValueError, UnicodeDecodeError) as exc:
            raise SealedObjectError(
                f"Encrypted object {name} has a damaged key slot: {exc}"
            ) from None
        return cls(segment_size, slot_size, nonce_prefix, (first, second))


def is_sealed(prefix: bytes) -> bool:
    """Return whether bytes read from the start of a file begin a sealed object."""
    return prefix[: len(MAGIC)] == MAGIC


class SegmentCipher:
    """Seals and opens the segments of one object under its data key."""

    def __init__(self, data_key: bytes, nonce_prefix: bytes, associated_data: bytes) -> None:
        self._aead = AESGCM(data_key)
        self._nonce_prefix = nonce_prefix
        self._associated_data = associated_data

    def _nonce(self, index: int, final: bool) -> bytes:
        if not 0 <= index < MAX_SEGMENTS:
            raise ValueError(f"segment index {index} is out of range; the object is too large")
        return self._nonce_prefix + index.to_bytes(4, "big") + (b"\x01" if final else b"\x00")

    def seal(self, index: int, plaintext: bytes | bytearray | memoryview, final: bool) -> bytes:
        """Return segment ``index`` encrypted, followed by its tag."""
        return self._aead.encrypt(self._nonce(index, final), plaintext, self._associated_data)

    def open(self, index: int, sealed: bytes, final: bool) -> bytes:
        """Return the plaintext of segment ``index``.

        Raises
        ------
        cryptography.exceptions.InvalidTag
            If the segment, its position or its final flag do not authenticate.
        """
        return self._aead.decrypt(self._nonce(index, final), sealed, self._associated_data)


def new_header(
    provider: KeyProvider, segment_size: int = DEFAULT_SEGMENT_SIZE
) -> tuple[ObjectHeader, bytes]:
    """Return the header of a new object and its data key, wrapped under the current key.

    The slot size is DEFAULT_SLOT_SIZE, or larger when the provider's key id
    and wrapped key need more room.
    """
    data_key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
    slot = KeySlot(provider.current_key_id, provider.wrap(data_key))
    needed = 3 + len(slot.key_id.encode("ascii")) + len(slot.wrapped)
    slot_size = max(DEFAULT_SLOT_SIZE, -(-needed // 64) * 64)
    header = ObjectHeader(segment_size, slot_size, os.urandom(NONCE_PREFIX_BYTES), (slot, None))
    return header, data_key


def seal_chunks(
    chunks: Iterable[bytes], provider: KeyProvider, segment_size: int = DEFAULT_SEGMENT_SIZE
) -> Iterator[bytes]:
    """Encrypt the concatenated ``chunks`` as a new sealed object under a new data key.

    Yields the header, then one sealed segment at a time, so memory stays at
    about one chunk plus one segment whatever the object's size.
    """
    header, data_key = new_header(provider, segment_size)
    cipher = SegmentCipher(data_key, header.nonce_prefix, header.fixed)
    yield header.encode()

    pending = bytearray()
    index = 0
    for chunk in chunks:
        pending += chunk
        if len(pending) <= segment_size:
            continue
        # At least one byte stays behind, because only the last segment is final.
        full = (len(pending) - 1) // segment_size
        with memoryview(pending) as view:
            for number in range(full):
                start = number * segment_size
                with view[start : start + segment_size] as segment:
                    sealed = cipher.seal(index, segment, final=False)
                yield sealed
                index += 1
        del pending[: full * segment_size]
    yield cipher.seal(index, pending, final=True)


def unwrap_data_key(header: ObjectHeader, provider: KeyProvider, name: str) -> tuple[bytes, int]:
    """Return the data key of an object and the index of the slot it came from.

    The slot of the provider's current key is tried first.

    Raises
    ------
    SealedObjectError
        If no slot names a configured key, or no slot unwraps.
    """
    filled = [(index, slot) for index, slot in enumerate(header.slots) if slot is not None]
    filled.sort(key=lambda item: item[1].key_id != provider.current_key_id)
    configured = set(provider.key_ids)
    failures = []
    for index, slot in filled:
        if slot.key_id not in configured:
            continue
        try:
            return provider.unwrap(slot.key_id, slot.wrapped), index
        except (UnknownKeyError, UnwrapError) as exc:
            failures.append(str(exc))
    if failures:
        raise SealedObjectError(f"Cannot decrypt stored object {name}: {'; '.join(failures)}")
    if not filled:
        raise SealedObjectError(f"Encrypted object {name} has no wrapped data key; it is damaged")
    needed = " or ".join(slot.key_id for _, slot in filled)
    setting = provider.earlier_key_setting(filled[0][1].key_id)
    raise SealedObjectError(
        f"Stored object {name} is encrypted under master key {needed}, which is not "
        f"configured; add that key to {setting}"
    )


class SealedObjectReader(SizedReader):
    """A read-only, seekable view of the plaintext of a sealed object.

    Only the segments a read touches are read and decrypted, so ranged reads
    and streaming cost memory of one segment. Opening checks the header, the
    data key and the last segment, so :attr:`size` is authentic and a file cut
    at a segment boundary fails at once. Every read returns authenticated
    plaintext or raises :class:`SealedObjectError`.

    The reader owns ``file`` and closes it.

    Raises
    ------
    SealedObjectError
        On opening, if the object is not sealed, its key is not configured,
        or its size or last segment is invalid.
    """

    def __init__(self, file: BinaryIO, provider: KeyProvider, name: str) -> None:
        super().__init__()
        self.name = name
        self._file = file
        try:
            self.header = ObjectHeader.read(file, name)
            data_key, _ = unwrap_data_key(self.header, provider, name)
            self._cipher = SegmentCipher(data_key, self.header.nonce_prefix, self.header.fixed)
            body_size = file.seek(0, io.SEEK_END) - self.header.size
            sealed_segment = self.header.segment_size + TAG_BYTES
            self._segments = max(1, -(-body_size // sealed_segment))
            last_size = body_size - (self._segments - 1) * sealed_segment
            if body_size < TAG_BYTES or last_size < TAG_BYTES:
                raise SealedObjectError(
                    f"Encrypted object {name} is truncated: its last segment has "
                    f"{max(last_size, 0)} bytes; restore the file from a backup"
                )
            self.size = body_size - self._segments * TAG_BYTES
            self._position = 0
            self._cached_index = -1
            self._cached = self._last = b""
            # Kept apart from the cache, because a sequential read needs it again at the end.
            self._last = self._segment(self._segments - 1)
        except BaseException:
            file.close()
            raise

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Fill ``buffer`` with plaintext from the current position; return the byte count."""
        with memoryview(buffer) as target_view, target_view.cast("B") as target:
            count = 0
            while count < len(target) and self._position < self.size:
                index, offset = divmod(self._position, self.header.segment_size)
                plaintext = self._segment(index)
                length = min(len(plaintext) - offset, len(target) - count)
                target[count : count + length] = plaintext[offset : offset + length]
                count += length
                self._position += length
            return count

    def readall(self) -> bytes:
        """Return the plaintext from the current position to the end."""
        parts = []
        while self._position < self.size:
            index, offset = divmod(self._position, self.header.segment_size)
            part = self._segment(index)[offset:]
            parts.append(part)
            self._position += len(part)
        return b"".join(parts)

    def close(self) -> None:
        """Close the underlying file and drop the decrypted segments."""
        if not self.closed:
            self._cached = self._last = b""
            self._file.close()
        super().close()

    def _segment(self, index: int) -> bytes:
        if index == self._cached_index:
            return self._cached
        if index == self._segments - 1 and self._last:
            return self._last
        sealed_segment = self.header.segment_size + TAG_BYTES
        self._file.seek(self.header.size + index * sealed_segment)
        sealed = _read_exactly(self._file, sealed_segment)
        final = index == self._segments - 1
        try:
            plaintext = self._cipher.open(index, sealed, final)
        except InvalidTag:
            raise SealedObjectError(
                f"Encrypted object {self.name} fails authentication at segment {index}: it was "
                "changed, reordered or truncated after it was written; restore the file from "
                "a backup"
            ) from None
        if not final and len(plaintext) != self.header.segment_size:
            raise SealedObjectError(f"Encrypted object {self.name} changed size while open")
        self._cached_index, self._cached = index, plaintext
        return plaintext


def open_sealed(file: BinaryIO, provider: KeyProvider, name: str) -> io.BufferedReader:
    """Return a buffered reader of the plaintext of the sealed object in ``file``.

    The buffer makes the many small reads of a DICOM parser cheap.

    Raises
    ------
    SealedObjectError
        See :class:`SealedObjectReader`.
    """
    return io.BufferedReader(SealedObjectReader(file, provider, name), DEFAULT_SEGMENT_SIZE)


def _read_exactly(file: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes, or fewer only at the end of the file."""
    parts = []
    remaining = size
    while remaining > 0:
        part = file.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)
