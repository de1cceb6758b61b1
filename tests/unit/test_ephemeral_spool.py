"""Unit tests for temporary files encrypted under a key held in memory, as STOW-RS spools."""

from __future__ import annotations

import io
import os

import pytest

from dicomvault.encryption.ephemeral import EphemeralSealedFile
from dicomvault.web.dicomweb.multipart import SPOOL_MEMORY_SIZE, PartSpool

SEGMENT = 100


class TestEphemeralSealedFile:
    @pytest.fixture
    def data(self) -> bytes:
        return b"DOE^JANE " * 100 + os.urandom(555)

    @pytest.fixture
    def backing(self) -> io.BytesIO:
        return io.BytesIO()

    @pytest.fixture
    def sealed(self, backing: io.BytesIO, data: bytes) -> EphemeralSealedFile:
        file = EphemeralSealedFile(backing, SEGMENT)
        for start in range(0, len(data), 77):
            file.write(data[start : start + 77])
        return file

    def test_backing_file_has_no_plaintext(
        self, sealed: EphemeralSealedFile, backing: io.BytesIO
    ) -> None:
        assert b"DOE^JANE" not in backing.getvalue()
        assert len(backing.getvalue()) > 0

    @pytest.mark.parametrize(
        "start,size",
        [(0, None), (0, 10), (SEGMENT - 5, 10), (950, 300), (1400, None)],
        ids=["all", "head", "across-boundary", "into-tail", "tail-only"],
    )
    def test_reads_back(
        self, sealed: EphemeralSealedFile, data: bytes, start: int, size: int | None
    ) -> None:
        sealed.seek(start)

        expected = data[start:] if size is None else data[start : start + size]
        assert sealed.read(size) == expected

    def test_write_after_read_appends(self, sealed: EphemeralSealedFile, data: bytes) -> None:
        sealed.seek(3)
        sealed.read(10)

        sealed.write(b"more" * 60)

        sealed.seek(0)
        assert sealed.read() == data + b"more" * 60

    def test_changed_backing_file_detected(
        self, sealed: EphemeralSealedFile, backing: io.BytesIO
    ) -> None:
        backing.seek(5)
        backing.write(b"\xff")

        sealed.seek(0)
        with pytest.raises(OSError, match="fails authentication at segment 0"):
            sealed.read(10)


def test_encrypted_part_spool_round_trip() -> None:
    body = os.urandom(SPOOL_MEMORY_SIZE + 300_000)

    with PartSpool(10**9, 10**9, encrypt=True) as spool:
        spool.begin_part({"content-type": "application/dicom"})
        spool.write(body[:1000])
        spool.write(body[1000:])
        spool.end_part()

        assert spool.read(spool.parts[0]) == body
        assert (
            spool.read(spool.parts[0], start=SPOOL_MEMORY_SIZE, size=20)
            == body[SPOOL_MEMORY_SIZE : SPOOL_MEMORY_SIZE + 20]
        )
