"""Unit tests for the sealed object format: round trips, ranged reads and tampering."""

from __future__ import annotations

import io
import os

import pytest

from dicomvault.encryption.keys import LocalKeyProvider, MasterKey, key_id_for
from dicomvault.encryption.object_format import (
    FIXED_HEADER,
    MAGIC,
    TAG_BYTES,
    KeySlot,
    ObjectHeader,
    SealedObjectError,
    SealedObjectReader,
    SlotTooSmallError,
    is_sealed,
    open_sealed,
    seal_chunks,
)

SEGMENT = 64  # small segments, so that short data spans many of them


def master_key(secret: bytes | None = None) -> MasterKey:
    secret = secret or os.urandom(32)
    return MasterKey(key_id_for(secret), "test", secret)


def provider(*keys: MasterKey) -> LocalKeyProvider:
    return LocalKeyProvider(keys[0], keys[1:])


@pytest.fixture
def keys() -> LocalKeyProvider:
    return provider(master_key())


def seal(data: bytes, keys: LocalKeyProvider, segment_size: int = SEGMENT) -> bytes:
    # Uneven chunks, so that segment boundaries fall inside chunks.
    chunks = [data[i : i + 37] for i in range(0, len(data), 37)]
    return b"".join(seal_chunks(chunks, keys, segment_size))


def read_all(sealed: bytes, keys: LocalKeyProvider) -> bytes:
    with open_sealed(io.BytesIO(sealed), keys, "ab/cd/object.dcm") as reader:
        return reader.read()


def header_size(sealed: bytes) -> int:
    return ObjectHeader.read(io.BytesIO(sealed), "x").size


class TestRoundTrip:
    @pytest.mark.parametrize(
        "size",
        [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT, 3 * SEGMENT + 5],
        ids=lambda size: f"{size}-bytes",
    )
    def test_plaintext_returned(self, keys: LocalKeyProvider, size: int) -> None:
        data = os.urandom(size)

        sealed = seal(data, keys)

        assert read_all(sealed, keys) == data
        segments = max(1, -(-size // SEGMENT))
        assert len(sealed) == header_size(sealed) + size + segments * TAG_BYTES

    def test_default_segments(self, keys: LocalKeyProvider) -> None:
        data = os.urandom(200_000)

        assert read_all(b"".join(seal_chunks([data], keys)), keys) == data

    def test_sealed_bytes_hide_plaintext(self, keys: LocalKeyProvider) -> None:
        data = b"DOE^JANE " * 100

        sealed = seal(data, keys)

        assert b"DOE^JANE" not in sealed
        assert is_sealed(sealed)

    def test_each_object_has_own_data_key(self, keys: LocalKeyProvider) -> None:
        data = b"same plaintext" * 10

        assert seal(data, keys)[FIXED_HEADER.size :] != seal(data, keys)[FIXED_HEADER.size :]

    def test_size_is_plaintext_size(self, keys: LocalKeyProvider) -> None:
        sealed = seal(os.urandom(1000), keys)

        with open_sealed(io.BytesIO(sealed), keys, "x") as reader:
            assert reader.seek(0, io.SEEK_END) == 1000


class TestRangedReads:
    @pytest.fixture
    def data(self) -> bytes:
        return os.urandom(10 * SEGMENT + 7)

    @pytest.mark.parametrize(
        "start,length",
        [(0, 10), (SEGMENT - 3, 6), (2 * SEGMENT, SEGMENT), (5, 5 * SEGMENT), (10 * SEGMENT, 50)],
        ids=["start", "across-boundary", "whole-segment", "many-segments", "past-end"],
    )
    def test_seek_and_read(
        self, keys: LocalKeyProvider, data: bytes, start: int, length: int
    ) -> None:
        with open_sealed(io.BytesIO(seal(data, keys)), keys, "x") as reader:
            reader.seek(start)
            assert reader.read(length) == data[start : start + length]
            assert reader.tell() == min(start + length, len(data))

    def test_readinto_fills_buffer_across_segments(
        self, keys: LocalKeyProvider, data: bytes
    ) -> None:
        buffer = bytearray(3 * SEGMENT)
        with open_sealed(io.BytesIO(seal(data, keys)), keys, "x") as reader:
            reader.seek(SEGMENT // 2)
            count = reader.readinto(buffer)

        assert count == len(buffer)
        assert bytes(buffer) == data[SEGMENT // 2 : SEGMENT // 2 + len(buffer)]

    def test_seek_relative_and_from_end(self, keys: LocalKeyProvider, data: bytes) -> None:
        with open_sealed(io.BytesIO(seal(data, keys)), keys, "x") as reader:
            reader.seek(-20, io.SEEK_END)
            reader.seek(5, io.SEEK_CUR)
            assert reader.read() == data[-15:]

    def test_negative_position_rejected(self, keys: LocalKeyProvider, data: bytes) -> None:
        with (
            open_sealed(io.BytesIO(seal(data, keys)), keys, "x") as reader,
            pytest.raises(ValueError, match="negative seek position -1"),
        ):
            reader.seek(-1)


class TestTampering:
    @pytest.fixture
    def sealed(self, keys: LocalKeyProvider) -> bytes:
        return seal(os.urandom(4 * SEGMENT + 10), keys)

    def test_changed_byte_fails_on_read(self, keys: LocalKeyProvider, sealed: bytes) -> None:
        damaged = bytearray(sealed)
        damaged[header_size(sealed) + SEGMENT + TAG_BYTES + 3] ^= 0x01

        # Unbuffered, so that the first read stops at the end of segment 0.
        with SealedObjectReader(io.BytesIO(bytes(damaged)), keys, "ab/cd/x.dcm") as reader:
            assert len(reader.read(SEGMENT)) == SEGMENT  # segment 0 is intact
            with pytest.raises(SealedObjectError, match=r"ab/cd/x\.dcm fails authentication at"):
                reader.read(SEGMENT)

    def test_swapped_segments_fail(self, keys: LocalKeyProvider, sealed: bytes) -> None:
        start = header_size(sealed)
        step = SEGMENT + TAG_BYTES
        first, second = sealed[start : start + step], sealed[start + step : start + 2 * step]
        swapped = sealed[:start] + second + first + sealed[start + 2 * step :]

        with (
            open_sealed(io.BytesIO(swapped), keys, "x") as reader,
            pytest.raises(SealedObjectError, match="segment 0"),
        ):
            reader.read()

    def test_cut_at_segment_boundary_fails_on_open(
        self, keys: LocalKeyProvider, sealed: bytes
    ) -> None:
        cut = sealed[: header_size(sealed) + 2 * (SEGMENT + TAG_BYTES)]

        with pytest.raises(SealedObjectError, match="fails authentication at segment 1"):
            open_sealed(io.BytesIO(cut), keys, "x")

    def test_cut_inside_tag_fails_on_open(self, keys: LocalKeyProvider, sealed: bytes) -> None:
        cut = sealed[: header_size(sealed) + SEGMENT + TAG_BYTES + 5]

        with pytest.raises(SealedObjectError, match="is truncated"):
            open_sealed(io.BytesIO(cut), keys, "x")

    def test_appended_bytes_fail_on_open(self, keys: LocalKeyProvider, sealed: bytes) -> None:
        with pytest.raises(SealedObjectError, match="fails authentication"):
            open_sealed(io.BytesIO(sealed + b"\0" * (SEGMENT + TAG_BYTES)), keys, "x")

    def test_changed_segment_size_fails(self, keys: LocalKeyProvider, sealed: bytes) -> None:
        damaged = bytearray(sealed)
        damaged[10:14] = (SEGMENT * 2).to_bytes(4, "big")

        with pytest.raises(SealedObjectError):
            open_sealed(io.BytesIO(bytes(damaged)), keys, "x").read()

    def test_header_cut_short(self, keys: LocalKeyProvider, sealed: bytes) -> None:
        with pytest.raises(SealedObjectError, match="ends inside its header"):
            open_sealed(io.BytesIO(sealed[: FIXED_HEADER.size + 10]), keys, "x")

    def test_plain_file_is_not_sealed(self, keys: LocalKeyProvider) -> None:
        plain = b"\0" * 128 + b"DICM" + b"\0" * 100

        assert not is_sealed(plain)
        with pytest.raises(SealedObjectError, match="x is not an encrypted object"):
            open_sealed(io.BytesIO(plain), keys, "x")

    def test_unknown_version(self, keys: LocalKeyProvider, sealed: bytes) -> None:
        damaged = bytearray(sealed)
        damaged[len(MAGIC)] = 9

        with pytest.raises(SealedObjectError, match="has format version 9"):
            open_sealed(io.BytesIO(bytes(damaged)), keys, "x")


class TestKeys:
    def test_wrong_key_names_needed_key(self, keys: LocalKeyProvider) -> None:
        sealed = seal(b"data", keys)
        other = provider(master_key())

        with pytest.raises(SealedObjectError) as raised:
            open_sealed(io.BytesIO(sealed), other, "ab/cd/x.dcm")

        message = str(raised.value)
        assert f"encrypted under master key {keys.current_key_id}" in message
        assert "encryption.previous_key_files" in message

    def test_previous_key_opens(self) -> None:
        old, new = master_key(), master_key()
        sealed = seal(b"data", provider(old))

        assert read_all(sealed, provider(new, old)) == b"data"

    def test_same_id_other_key_fails(self, keys: LocalKeyProvider) -> None:
        sealed = seal(b"data", keys)
        impostor = provider(MasterKey(keys.current_key_id, "impostor", os.urandom(32)))

        with pytest.raises(SealedObjectError, match="does not authenticate under master key"):
            open_sealed(io.BytesIO(sealed), impostor, "x")

    def test_key_material_absent_from_object(self) -> None:
        key = master_key()

        sealed = seal(b"data", provider(key))

        assert key.secret not in sealed
        assert key.secret.hex().encode() not in sealed


class TestKeySlot:
    def test_round_trip(self) -> None:
        slot = KeySlot("local:0123456789abcdef", os.urandom(60))

        assert KeySlot.decode(slot.encode(256)) == slot

    def test_empty_slot(self) -> None:
        assert KeySlot.decode(b"\0" * 256) is None

    def test_too_small(self) -> None:
        with pytest.raises(SlotTooSmallError, match="needs 85 bytes, and the key slots have 64"):
            KeySlot("local:0123456789abcdef", os.urandom(60)).encode(64)

    def test_overrun_rejected(self) -> None:
        with pytest.raises(ValueError, match="runs past the end of its slot"):
            KeySlot.decode(bytes([3]) + b"abc" + (500).to_bytes(2, "big") + b"\0" * 100)
