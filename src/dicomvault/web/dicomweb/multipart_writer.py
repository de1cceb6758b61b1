"""Write multipart/related response bodies (RFC 2387) part by part."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator

CRLF = b"\r\n"


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
    """Yield a multipart body from (content type, chunks) pairs without joining the chunks.

    Every part ends with CRLF before the next delimiter, as RFC 2046 5.1.1
    requires.
    """
    for part_content_type, chunks in parts:
        yield part_header(boundary, part_content_type)
        yield from chunks
        yield CRLF
    yield closing(boundary)
