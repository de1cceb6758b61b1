"""Read a multipart/related request body as it arrives and spool its parts to a temporary file.

The parser is python-multipart's streaming ``MultipartParser`` (RFC 2046
5.1.1 syntax), which works for any multipart subtype. The part bodies go, one
after another, into one ``SpooledTemporaryFile`` that stays in memory up to
``SPOOL_MEMORY_SIZE`` bytes and moves to disk beyond, encrypted when the
archive encrypts stored files. A reader then takes the parts back one at a
time, so at most one part is in memory.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable, Mapping
from typing import Protocol

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from dicomvault.encryption.ephemeral import EphemeralSealedFile

LOGGER = logging.getLogger(__name__)

SPOOL_MEMORY_SIZE = 8 * 1024 * 1024
# RFC 2046 5.1.1 limits a boundary to 70 characters.
MAX_BOUNDARY_LENGTH = 70
# Maximum size of a preamble (text before the first delimiter, RFC 2046 5.1.1).
MAX_PREAMBLE_SIZE = 64 * 1024


class MultipartError(ValueError):
    """The request body is not a well-formed multipart body; the message names the fault."""


class PayloadTooLargeError(ValueError):
    """A part or the whole body exceeds a configured size limit; the message names it."""


@dataclasses.dataclass(frozen=True)
class MediaType:
    """A media type with its parameters: type and parameter names in lower case."""

    type: str
    parameters: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class SpooledPart:
    """One part of the body: its 1-based position, headers and place in the spool file."""

    number: int
    headers: Mapping[str, str]
    offset: int
    size: int

    @property
    def content_type(self) -> str:
        """The part's Content-Type header, or '' when it has none."""
        return self.headers.get("content-type", "")


def parse_media_type(value: str) -> MediaType:
    """Parse a Content-Type value such as 'multipart/related; type="application/dicom"'."""
    media_type, parameters = parse_options_header(value)
    return MediaType(
        media_type.decode("latin-1").strip().lower(),
        {name.decode("latin-1").lower(): raw.decode("latin-1") for name, raw in parameters.items()},
    )


class _SpoolFile(Protocol):
    """The file interface the spool uses: a temporary file, or an EphemeralSealedFile."""

    def write(self, data: bytes | memoryview, /) -> int: ...

    def seek(self, offset: int, /) -> int: ...

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class PartSpool:
    """Part bodies written one after another to one temporary file, then read back one by one.

    Parameters
    ----------
    max_part_size : int
        Maximum size of one part body, in bytes.
    max_total_size : int
        Maximum size of all part bodies together, in bytes.
    part_limit_name, total_limit_name : str
        Setting names quoted when a limit is exceeded.
    max_parts : int, optional
        Maximum number of parts; none by default.
    parts_limit_name : str, optional
        Setting name quoted when ``max_parts`` is exceeded.
    encrypt : bool
        Encrypt what goes to disk under a key held only in memory, for an
        archive with encryption at rest on.
    """

    def __init__(
        self,
        max_part_size: int,
        max_total_size: int,
        part_limit_name: str = "",
        total_limit_name: str = "",
        encrypt: bool = False,
        max_parts: int | None = None,
        parts_limit_name: str = "",
    ) -> None:
        self.max_part_size = max_part_size
        self.max_parts = max_parts
        self.parts_limit_name = parts_limit_name
        self.max_total_size = max_total_size
        self.part_limit_name = part_limit_name
        self.total_limit_name = total_limit_name
        self.parts: list[SpooledPart] = []
        spooled = tempfile.SpooledTemporaryFile(  # noqa: SIM115 (closed by close())
            max_size=SPOOL_MEMORY_SIZE, prefix="dicomvault-stow-"
        )
        self._file: _SpoolFile = EphemeralSealedFile(spooled) if encrypt else spooled
        self._size = 0
        self._part_headers: dict[str, str] | None = None
        self._part_offset = 0

    def begin_part(self, headers: Mapping[str, str]) -> None:
        """Start a new part with these headers (names in lower case).

        Raises
        ------
        PayloadTooLargeError
            If the body already has ``max_parts`` parts.
        """
        if self.max_parts is not None and len(self.parts) >= self.max_parts:
            raise PayloadTooLargeError(
                f"The request body has more than {self.max_parts} parts, the limit set by "
                f"{self.parts_limit_name or 'the server'}; send fewer instances per request"
            )
        self._part_headers = dict(headers)
        self._part_offset = self._size

    def write(self, data: bytes | memoryview) -> None:
        """Append body bytes to the current part.

        Raises
        ------
        PayloadTooLargeError
            If the part or the body grows beyond its limit.
        """
        if self._part_headers is None:
            raise RuntimeError("write() before begin_part()")
        self._size += len(data)
        part_size = self._size - self._part_offset
        if part_size > self.max_part_size:
            raise PayloadTooLargeError(
                f"Part {len(self.parts) + 1} is larger than {self.max_part_size} bytes, the "
                f"limit set by {self.part_limit_name or 'the server'}"
            )
        if self._size > self.max_total_size:
            raise PayloadTooLargeError(
                f"The request body is larger than {self.max_total_size} bytes, the limit "
                f"set by {self.total_limit_name or 'the server'}; send fewer instances "
                "per request"
            )
        self._file.write(data)

    def end_part(self) -> None:
        """Finish the current part."""
        if self._part_headers is None:
            raise RuntimeError("end_part() before begin_part()")
        self.parts.append(
            SpooledPart(
                len(self.parts) + 1,
                self._part_headers,
                self._part_offset,
                self._size - self._part_offset,
            )
        )
        self._part_headers = None

    def read(self, part: SpooledPart, start: int = 0, size: int | None = None) -> bytes:
        """Return the body of ``part`` from byte ``start`` on, or only ``size`` bytes of it."""
        available = max(part.size - start, 0)
        self._file.seek(part.offset + start)
        return self._file.read(available if size is None else min(size, available))

    def close(self) -> None:
        """Delete the temporary file."""
        self._file.close()

    def __enter__(self) -> PartSpool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class MultipartReader:
    """Feeds a multipart body, chunk by chunk, into a :class:`PartSpool`.

    Parameters
    ----------
    boundary : str
        The boundary parameter of the request's Content-Type.
    spool : PartSpool
        Where the part bodies go.
    check_part : callable, optional
        Called with the part number and its headers before the part body is
        spooled; raises to reject the request without reading further.

    Raises
    ------
    MultipartError
        If the boundary is empty or longer than 70 characters.
    """

    def __init__(
        self,
        boundary: str,
        spool: PartSpool,
        check_part: Callable[[int, Mapping[str, str]], None] | None = None,
    ) -> None:
        if not boundary or len(boundary) > MAX_BOUNDARY_LENGTH:
            raise MultipartError(
                f"The multipart boundary must have 1 to {MAX_BOUNDARY_LENGTH} characters, "
                f"got {len(boundary)}"
            )
        self.spool = spool
        self._boundary = boundary
        self._check_part = check_part
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._ended = False
        # Bytes before the first delimiter, until it is found; None after.
        self._preamble: bytearray | None = bytearray()
        self._parser = MultipartParser(
            boundary.encode("latin-1"),
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    def write(self, chunk: bytes) -> None:
        """Parse the next chunk of the body.

        Raises
        ------
        MultipartError
            If the chunk breaks the multipart syntax.
        PayloadTooLargeError
            If a part or the body exceeds its limit.
        """
        if self._ended:
            # RFC 2046 5.1.1: an epilogue after the close delimiter is ignored.
            return
        if self._preamble is not None:
            chunk = self._skip_preamble(chunk)
            if not chunk:
                return
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise MultipartError(f"The multipart body is malformed: {exc}") from None

    def _skip_preamble(self, chunk: bytes) -> bytes:
        """Return the body from the first delimiter on, or b"" while it has not come.

        python-multipart expects the body to start with the delimiter, but
        RFC 2046 5.1.1 allows a preamble before it, which is ignored.
        """
        assert self._preamble is not None
        self._preamble += chunk
        delimiter = b"--" + self._boundary.encode("latin-1")
        if self._preamble.startswith(delimiter):
            start = 0
        else:
            found = self._preamble.find(b"\r\n" + delimiter)
            start = -1 if found == -1 else found + 2
        if start == -1:
            if len(self._preamble) > MAX_PREAMBLE_SIZE:
                raise MultipartError(
                    f"The multipart body has no delimiter '--{self._boundary}' in its first "
                    f"{MAX_PREAMBLE_SIZE} bytes; its boundary differs from the Content-Type's "
                    "boundary parameter"
                )
            return b""
        body = bytes(self._preamble[start:])
        self._preamble = None
        return body

    def finish(self) -> list[SpooledPart]:
        """Check that the body ended with the close delimiter; return the parts.

        Raises
        ------
        MultipartError
            If the close delimiter never came, so the body is truncated or
            its boundary differs from the Content-Type's.
        """
        if self._preamble is not None:
            raise MultipartError(
                f"The multipart body has no delimiter '--{self._boundary}': it is empty, or its "
                "boundary differs from the Content-Type's boundary parameter"
            )
        if not self._ended:
            raise MultipartError(
                f"The multipart body has no close delimiter '--{self._boundary}--': it is "
                "truncated, or its boundary differs from the Content-Type's boundary parameter"
            )
        return self.spool.parts

    def _on_part_begin(self) -> None:
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        if self._check_part is not None:
            self._check_part(len(self.spool.parts) + 1, self._headers)
        self.spool.begin_part(self._headers)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.spool.write(memoryview(data)[start:end])

    def _on_part_end(self) -> None:
        self.spool.end_part()

    def _on_end(self) -> None:
        self._ended = True
