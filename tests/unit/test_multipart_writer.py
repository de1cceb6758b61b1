"""Multipart/related response bodies: delimiters, parts and coalesced chunks."""

from __future__ import annotations

from dicomvault.web.dicomweb.multipart_writer import COALESCE_BYTES, coalesce, stream_parts


def test_body_layout() -> None:
    parts = [("application/dicom", [b"ab", b"cd"]), ("application/dicom", [b"ef"])]

    body = b"".join(stream_parts("XYZ", parts))

    assert body == (
        b"--XYZ\r\nContent-Type: application/dicom\r\n\r\nabcd\r\n"
        b"--XYZ\r\nContent-Type: application/dicom\r\n\r\nef\r\n"
        b"--XYZ--\r\n"
    )


def test_small_parts_coalesced() -> None:
    parts = [("application/dicom", [bytes(1000)]) for _ in range(3000)]

    chunks = list(stream_parts("XYZ", parts))

    assert all(len(chunk) >= COALESCE_BYTES for chunk in chunks[:-1])
    assert len(chunks) == sum(len(chunk) for chunk in chunks) // COALESCE_BYTES + 1


def test_coalesce_keeps_bytes_and_order() -> None:
    pieces = [bytes([n]) * n for n in range(1, 60)]

    chunks = list(coalesce(pieces, 100))

    assert b"".join(chunks) == b"".join(pieces)
    assert all(len(chunk) >= 100 for chunk in chunks[:-1])
    assert list(coalesce([], 100)) == []
