"""Parse Accept headers and choose media types and transfer syntaxes (PS3.18 8.7).

Each acceptable media type of a retrieve request is a multipart/related
range whose ``type`` parameter names the part media type, with an optional
``transfer-syntax`` parameter. This module turns such headers into ordered
lists of :class:`Acceptable` and picks the representation of each instance.
"""

from __future__ import annotations

import dataclasses
import re

from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

ANY_SYNTAX = "*"
MULTIPART_RELATED = "multipart/related"
DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
DICOM_JSON = "application/dicom+json"

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# name=value, where value is a token or a quoted string (RFC 9110 5.6.6).
_PARAMETER_RE = re.compile(
    r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*'
)

# Compressed pixel data media types and their transfer syntaxes, the
# default first (PS3.18 Table 8.7.3-5).
IMAGE_MEDIA_SYNTAXES: dict[str, tuple[str, ...]] = {
    "image/jpeg": (
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
    ),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
    "image/x-dicom-rle": ("1.2.840.10008.1.2.5",),
    "image/jphc": ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.203"),
}
NATIVE_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
)


class NotAcceptableError(ValueError):
    """No representation the client accepts can be produced; the route returns 406."""


class MediaTypeError(ValueError):
    """An Accept header cannot be parsed; the route returns 400."""


@dataclasses.dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header."""

    media_type: str
    parameters: dict[str, str]
    quality: float


@dataclasses.dataclass(frozen=True)
class Acceptable:
    """A part media type the client accepts, with its transfer syntax or '*'.

    ``transfer_syntax`` is empty when the client named none, which means the
    default of the media type.
    """

    media_type: str
    transfer_syntax: str


def parse_accept(header: str | None) -> list[MediaRange]:
    """Parse an Accept header into media ranges, most preferred first.

    An absent or empty header is ``*/*``.

    Raises
    ------
    MediaTypeError
        If an entry is not of the form type/subtype with parameters.
    """
    if header is None or not header.strip():
        return [MediaRange("*/*", {}, 1.0)]
    ranges = []
    for position, entry in enumerate(_split_outside_quotes(header, ",")):
        if not entry.strip():
            continue
        media_type, *parameter_texts = _split_outside_quotes(entry, ";")
        media_type = media_type.strip().lower()
        if media_type.count("/") != 1:
            raise MediaTypeError(f"Invalid media type '{media_type}' in the Accept header")
        parameters: dict[str, str] = {}
        for text in parameter_texts:
            match = _PARAMETER_RE.fullmatch(text)
            if not match:
                raise MediaTypeError(f"Invalid parameter '{text.strip()}' in the Accept header")
            value = match.group(2)
            if value.startswith('"'):
                value = value[1:-1].replace('\\"', '"')
            parameters[match.group(1).lower()] = value
        quality = _quality(parameters.pop("q", "1"))
        if quality > 0:
            ranges.append((quality, position, MediaRange(media_type, parameters, quality)))
    ranges.sort(key=lambda item: (-item[0], item[1]))
    return [item[2] for item in ranges]


def _quality(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise MediaTypeError(f"Invalid quality value q={text} in the Accept header") from None
    if not 0 <= value <= 1:
        raise MediaTypeError(f"Invalid quality value q={text}: it must be from 0 to 1")
    return value


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def multipart_acceptables(
    ranges: list[MediaRange], supported: tuple[str, ...], default: str
) -> list[Acceptable]:
    """Return the acceptable part media types among ``supported``, most preferred first.

    ``multipart/related`` without ``type`` and ``*/*`` stand for ``default``.
    A single-part media type (such as ``application/dicom`` alone) is not
    acceptable here.

    Raises
    ------
    MediaTypeError
        If a transfer-syntax parameter is neither '*' nor a UID.
    """
    acceptables = []
    for media_range in ranges:
        if media_range.media_type in {"*/*", "multipart/*"}:
            part_type = default
        elif media_range.media_type == MULTIPART_RELATED:
            part_type = media_range.parameters.get("type", default).lower()
        else:
            continue
        syntax = media_range.parameters.get("transfer-syntax", "").strip()
        if syntax and syntax != ANY_SYNTAX and not _UID_RE.match(syntax):
            raise MediaTypeError(
                f"Invalid transfer-syntax '{syntax}' in the Accept header: expected a "
                "transfer syntax UID such as 1.2.840.10008.1.2.1, or '*'"
            )
        if part_type in {"*/*", "*"}:
            part_type = default
        if part_type in supported:
            acceptables.append(Acceptable(part_type, syntax))
    return acceptables


def single_acceptables(ranges: list[MediaRange], supported: tuple[str, ...]) -> list[str]:
    """Return the single-part media types among ``supported`` the client accepts, in order.

    ``*/*`` and ``type/*`` match the first supported type they cover.
    """
    chosen: list[str] = []
    for media_range in ranges:
        kind = media_range.media_type
        for candidate in supported:
            if kind in {"*/*", candidate} or (
                kind.endswith("/*") and candidate.startswith(kind[:-1])
            ):
                if candidate not in chosen:
                    chosen.append(candidate)
                break
    return chosen


def choose_instance_syntax(
    acceptables: list[Acceptable], stored: str, convertible: tuple[str, ...], decodable: bool
) -> str:
    """Return the transfer syntax to send an instance in; '*' means as stored.

    Parameters
    ----------
    acceptables : list of Acceptable
        ``application/dicom`` entries, most preferred first.
    stored : str
        The instance's stored transfer syntax.
    convertible : tuple of str
        Syntaxes the archive can encode to.
    decodable : bool
        Whether the stored pixel data (if any) can be decoded here.

    Raises
    ------
    NotAcceptableError
        If no acceptable transfer syntax can be produced.
    """
    for acceptable in acceptables:
        syntax = acceptable.transfer_syntax or ExplicitVRLittleEndian
        if syntax in {ANY_SYNTAX, stored}:
            return ANY_SYNTAX
        if syntax in convertible and decodable:
            return syntax
    requested = ", ".join(a.transfer_syntax or ExplicitVRLittleEndian for a in acceptables)
    raise NotAcceptableError(
        f"The instance is stored in {describe_syntax(stored)} and cannot be converted to "
        f"the requested transfer syntax ({requested}); the archive converts to "
        f"{', '.join(convertible)} or sends as stored with transfer-syntax=*"
    )


def describe_syntax(uid: str) -> str:
    """Return a transfer syntax UID with its name, such as '1.2.840.10008.1.2.5 (RLE Lossless)'."""
    name = UID(uid).name
    return f"{uid} ({name})" if name and name != uid else uid


def is_uid(text: str) -> bool:
    """Return whether ``text`` has the form of a UID: digits and dots, at most 64 characters."""
    return len(text) <= 64 and bool(_UID_RE.match(text))
