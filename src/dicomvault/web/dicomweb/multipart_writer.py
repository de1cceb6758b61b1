"""Write multipart/related response bodies (RFC 2387) part by part."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator

CRLF = b"\r\n"
# Bytes gathered before the body yields them. Each yield of a streamed
# response costs a hand-over to the event loop, and small parts (part
# headers, delimiters, small instances) would otherwise each pay it.
COALESCE_BYTES = 1024 * 1024


def new_boundary() -> str:
    """Return a random boundary that cannot occur in DICOM content by chance."""
    return f"dicomvault-{uuid.uuid4().hex}"


def content_type(part_type: str, boundary: str, transfer_syntax: str = "") -> str:
    """Return the Content-Type of a multipart/related body whose parts have ``part_type``."""
    value = f'multipart/related; type="{part_type}"; boundary={boundary}'
    if transfer_syntax:
        value += f"; transfer-syntax={transfer_syntax}"
    return value


def part_header(boundary: str, part_content_type: str, location: str = "") -> bytes:
    """Return the delimiter and headers that open one part."""
    lines = [f"--{boundary}", f"Content-Type: {part_content_type}"]
    if location:
        lines.append(f"Content-Location: {location}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def closing(boundary: str) -> bytes:
    """Return the close delimiter that ends the body."""
    return f"--{boundary}--\r\n".encode("ascii")


def stream_parts(boundary: str, parts: Iterable[tuple[str, Iterable[bytes]]]) -> Iterator[bytes]:
    """Return a multipart body from (content type, chunks) pairs, as chunks of about 1 MiB.

    Every part ends with CRLF before the next delimiter, as RFC 2046 5.1.1
    requires.
    """
    return coalesce(_pieces(boundary, parts), COALESCE_BYTES)


def _pieces(boundary: str, parts: Iterable[tuple[str, Iterable[bytes]]]) -> Iterator[bytes]:
    for part_content_type, chunks in parts:
        yield part_header(boundary, part_content_type)
        yield from chunks
        yield CRLF
    yield closing(boundary)


def coalesce(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Yield the bytes of ``pieces`` joined into chunks of at least ``size`` (but the last)."""
    pending: list[bytes] = []
    pending_size = 0
    for piece in pieces:
        pending.append(piece)
        pending_size += len(piece)
        if pending_size >= size:
            yield b"".join(pending)
            pending, pending_size = [], 0
    if pending:
        yield b"".join(pending)
