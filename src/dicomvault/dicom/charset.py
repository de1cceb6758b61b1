"""Choose the Specific Character Set of a response so every value can be encoded."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

from pydicom.charset import convert_encodings, decode_bytes, encode_string

UTF8 = "ISO_IR 192"
_PN_DELIMITERS = {ord("^"), ord("=")}


def charset_terms(value: object) -> list[str]:
    """Return a Specific Character Set value as a list of defined terms."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return value.split("\\")
    return [str(item) for item in value]  # type: ignore[attr-defined]


def can_encode(text: str, terms: Sequence[str]) -> bool:
    """Return whether ``text`` survives encoding and decoding with ``terms``."""
    if text.isascii() and "\x1b" not in text:
        return True
    if not terms:
        return False
    try:
        encodings = convert_encodings(list(terms))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            encoded = encode_string(text, encodings)
            decoded = decode_bytes(encoded, encodings, _PN_DELIMITERS)
    except (UserWarning, LookupError, ValueError, UnicodeError):
        return False
    return decoded == text


def choose_response_charset(requested: Sequence[str], texts: Iterable[str]) -> list[str]:
    """Return the character set for a response carrying ``texts``.

    The requested character set is kept when it can encode every value, so a
    client gets the encoding it requested. Otherwise the response uses UTF-8
    (ISO_IR 192), which encodes any value. An empty list means the default repertoire.
    """
    non_ascii = [text for text in texts if not text.isascii()]
    if not non_ascii:
        return list(requested)
    if requested and all(can_encode(text, requested) for text in non_ascii):
        return list(requested)
    return [UTF8]
