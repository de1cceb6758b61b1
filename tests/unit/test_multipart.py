"""The multipart/related reader: parts spooled intact whatever the chunking, and its errors."""

from __future__ import annotations

import pytest

from dicomvault.web.dicomweb.multipart import (
    MultipartError,
    MultipartReader,
    PartSpool,
    PayloadTooLargeError,
    parse_media_type,
)

BOUNDARY = "b0undary"
# Bodies that contain CRLF and look like delimiters, without being one.
PART_BODIES = [
    b"first part\r\n--b0undar\r\n",
    b"\r\n--b0undaryX is not a delimiter\r\n",
    b"",
    bytes(range(256)) * 40,
]


def body_of(parts: list[bytes], preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    body = preamble
    for part in parts:
        body += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += part + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode() + epilogue


def read(body: bytes, chunk_size: int, **limits: int) -> list[bytes]:
    spool = PartSpool(limits.get("max_part", 10**9), limits.get("max_total", 10**9))
    with spool:
        reader = MultipartReader(BOUNDARY, spool)
        for start in range(0, len(body), chunk_size):
            reader.write(body[start : start + chunk_size])
        return [spool.read(part) for part in reader.finish()]


class TestMultipartReader:
    @pytest.mark.parametrize("chunk_size", [1, 3, 11, 64, 1024, 1 << 20])
    def test_parts_intact(self, chunk_size: int) -> None:
        assert read(body_of(PART_BODIES), chunk_size) == PART_BODIES

    @pytest.mark.parametrize("chunk_size", [1, 5, 1 << 20])
    def test_preamble_and_epilogue_ignored(self, chunk_size: int) -> None:
        body = body_of(PART_BODIES[:1], preamble=b"preamble\r\n", epilogue=b"epilogue")
        assert read(body, chunk_size) == PART_BODIES[:1]

    def test_read_range(self) -> None:
        with PartSpool(10**6, 10**6) as spool:
            reader = MultipartReader(BOUNDARY, spool)
            reader.write(body_of([b"first", b"0123456789"]))
            first, second = reader.finish()
            assert spool.read(second, start=3) == b"3456789"
            assert spool.read(second, start=3, size=2) == b"34"
            assert spool.read(second, start=20) == b""
            assert spool.read(first, size=100) == b"first"

    def test_part_headers(self) -> None:
        spool = PartSpool(10**6, 10**6)
        reader = MultipartReader(BOUNDARY, spool)
        reader.write(
            f"--{BOUNDARY}\r\nContent-Type: application/dicom; transfer-syntax=1.2\r\n"
            f"Content-ID: <a>\r\n\r\ndata\r\n--{BOUNDARY}--".encode()
        )
        (part,) = reader.finish()
        assert part.headers == {
            "content-type": "application/dicom; transfer-syntax=1.2",
            "content-id": "<a>",
        }
        assert part.content_type == "application/dicom; transfer-syntax=1.2"
        spool.close()

    def test_truncated(self) -> None:
        body = body_of(PART_BODIES)
        with pytest.raises(MultipartError, match="has no close delimiter '--b0undary--'"):
            read(body[:-20], 7)

    def test_part_too_large(self) -> None:
        with pytest.raises(PayloadTooLargeError, match="Part 4 is larger than 1000 bytes"):
            read(body_of(PART_BODIES), 100, max_part=1000)

    def test_body_too_large(self) -> None:
        with pytest.raises(PayloadTooLargeError, match="The request body is larger than 500"):
            read(body_of(PART_BODIES), 100, max_total=500)

    @pytest.mark.parametrize("boundary", ["", "x" * 71])
    def test_invalid_boundary(self, boundary: str) -> None:
        with PartSpool(1, 1) as spool, pytest.raises(MultipartError, match="1 to 70 characters"):
            MultipartReader(boundary, spool)


class TestParseMediaType:
    def test_parameters(self) -> None:
        media_type = parse_media_type(
            'Multipart/Related; Type="application/dicom"; boundary="a b"; start=x'
        )
        assert media_type.type == "multipart/related"
        assert media_type.parameters == {
            "type": "application/dicom",
            "boundary": "a b",
            "start": "x",
        }

    def test_empty(self) -> None:
        assert parse_media_type("").type == ""
