"""Describe an instance for the index by walking its encoded dataset once, for speed.

:func:`describe_encoded` produces the same :class:`InstanceHeader` as
``describe_instance(read_header(...))`` from :mod:`dicomvault.dicom.header`,
with the DICOM JSON already encoded, at a fraction of the cost: it converts
the common value representations itself instead of building pydicom data
elements. It handles Implicit and Explicit VR Little Endian datasets whose
text is in the default repertoire, ISO_IR 100 or ISO_IR 192.

Anything else returns None: big endian, deflate, other character sets, UN
values, ambiguous VRs, values it does not parse, truncated or out-of-order
elements. The caller then reads the dataset with the pydicom-based path,
which accepts or rejects it with the reason. So correctness never depends
on this module: it returns what the pydicom path returns, or nothing.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import re
import struct
from json.encoder import encode_basestring_ascii as _encode_string

from pydicom._dicom_dict import DicomDictionary
from pydicom.uid import UID

from dicomvault.dicom.attributes import COLUMN_ATTRIBUTES
from dicomvault.dicom.encoded_json import EncodedJSON
from dicomvault.dicom.header import (
    BULK_DATA_THRESHOLD,
    DEFLATED_JPIP_SYNTAXES,
    PIXEL_DATA_TAGS,
    UNDEFINED_LENGTH,
    InstanceHeader,
    check_trailing_elements,
    pixel_data_end,
)

# pydicom's DataElement.to_json_dict inlines a binary value up to this many
# bytes, whose base64 form then fits in BULK_DATA_THRESHOLD characters.
MAX_INLINE_BINARY = BULK_DATA_THRESHOLD // 4 * 3

ITEM = 0xFFFEE000
ITEM_DELIMITATION = 0xFFFEE00D
SEQUENCE_DELIMITATION = 0xFFFEE0DD
SPECIFIC_CHARACTER_SET = 0x00080005
IDENTIFYING_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

# Python codecs for the Specific Character Set values handled here, as
# pydicom 3.0 chooses them. Without the attribute pydicom decodes as Latin-1.
ENCODINGS = {"": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}

# Kinds of value conversion, one per family of value representations.
_TEXT = 1  # SH, LO, UC: character set, backslash-separated values, trailing spaces removed
_SINGLE_TEXT = 2  # ST, LT, UT: character set, one value
_PERSON_NAME = 3  # PN
_STRING = 4  # AS, CS, DA, DT, TM: Latin-1, backslash-separated values
_APPLICATION_ENTITY = 5  # AE: as _STRING, but leading spaces are not significant either
_UID = 6  # UI
_URI = 7  # UR
_INTEGER_STRING = 8  # IS
_DECIMAL_STRING = 9  # DS
_NUMBER = 10  # binary numbers: US, SS, UL, SL, UV, SV, FL, FD
_ATTRIBUTE_TAG = 11  # AT
_BINARY = 12  # OB, OD, OF, OL, OV, OW
_SEQUENCE = 13  # SQ

_KINDS: dict[str, int] = {
    **dict.fromkeys(("SH", "LO", "UC"), _TEXT),
    **dict.fromkeys(("ST", "LT", "UT"), _SINGLE_TEXT),
    "PN": _PERSON_NAME,
    **dict.fromkeys(("AS", "CS", "DA", "DT", "TM"), _STRING),
    "AE": _APPLICATION_ENTITY,
    "UI": _UID,
    "UR": _URI,
    "IS": _INTEGER_STRING,
    "DS": _DECIMAL_STRING,
    **dict.fromkeys(("US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"), _NUMBER),
    "AT": _ATTRIBUTE_TAG,
    **dict.fromkeys(("OB", "OD", "OF", "OL", "OV", "OW"), _BINARY),
    "SQ": _SEQUENCE,
}
_NUMBER_FORMATS = {
    "US": ("H", 2),
    "SS": ("h", 2),
    "UL": ("L", 4),
    "SL": ("l", 4),
    "UV": ("Q", 8),
    "SV": ("q", 8),
    "FL": ("f", 4),
    "FD": ("d", 8),
}
# VRs whose explicit VR encoding has two reserved bytes and a 32-bit length (PS3.5 7.1.2).
_LONG_LENGTH_VRS = frozenset(
    ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV")
)
# A VR's two characters read as a little endian 16-bit number, a cheap dictionary key.
_VR_CODES = {vr: int.from_bytes(vr.encode(), "little") for vr in _KINDS}
# Explicit VR element headers by VR code: (VR, kind, 32-bit length).
_EXPLICIT_VRS: dict[int, tuple[str, int, bool]] = {
    _VR_CODES[vr]: (vr, kind, vr in _LONG_LENGTH_VRS) for vr, kind in _KINDS.items()
}
# Implicit VR: the dictionary VR of public tags, with kind and VR code;
# ambiguous ones ("US or SS") are left out.
_IMPLICIT_VRS: dict[int, tuple[str, int, int]] = {
    tag: (entry[0], _KINDS[entry[0]], _VR_CODES[entry[0]])
    for tag, entry in DicomDictionary.items()
    if entry[0] in _KINDS
}

# Values pydicom's IS and DSfloat accept and convert exactly like int() and float().
_INTEGER = re.compile(r" *[+-]?[0-9]+ *")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

_COLUMN_TAGS: dict[int, str] = {attribute.tag: attribute.keyword for attribute in COLUMN_ATTRIBUTES}

_HEADER = struct.Struct("<HHHH")  # explicit VR: group, element, VR code, 16-bit length
_IMPLICIT_HEADER = struct.Struct("<HHI")  # group, element, 32-bit length
_LENGTH = struct.Struct("<I")

# Transfer syntax UID to the result of _implicit_vr.
_syntaxes: dict[str, bool | None] = {}
MAX_CACHED_SYNTAXES = 100


class _Unsupported(Exception):
    """The dataset takes the pydicom-based path."""


@dataclasses.dataclass(frozen=True)
class EncodedHeader:
    """A header read by :func:`read_encoded`: its DICOM JSON text and column values.

    ``values`` maps every column attribute keyword to its value as
    ``header.describe_instance`` computes it ('' when absent).
    """

    header_json: EncodedJSON
    values: dict[str, str]
    specific_character_set: str


def describe_encoded(dataset: bytes, transfer_syntax_uid: str) -> InstanceHeader | None:
    """Read a dataset's header and describe it for the index, or return None.

    Parameters
    ----------
    dataset : bytes
        The encoded dataset, after the File Meta Information.
    transfer_syntax_uid : str
        Its transfer syntax.

    Returns
    -------
    InstanceHeader or None
        The description, with ``header_json`` as :class:`EncodedJSON`; None
        when the dataset needs the pydicom-based path, which also decides
        whether it is valid and names a missing UID.

    Raises
    ------
    InvalidDatasetError
        If Pixel Data or the elements after it are truncated, with the
        message the pydicom-based path gives.
    """
    header = read_encoded(dataset, transfer_syntax_uid)
    if header is None:
        return None
    uids = [header.values[keyword] for keyword in IDENTIFYING_UIDS]
    if not all(uids) or any("\\" in uid for uid in uids):
        return None
    return InstanceHeader(
        sop_class_uid=uids[0],
        sop_instance_uid=uids[1],
        study_instance_uid=uids[2],
        series_instance_uid=uids[3],
        transfer_syntax_uid=transfer_syntax_uid,
        values=header.values,
        specific_character_set=header.specific_character_set,
        header_json=header.header_json,
    )


def read_encoded(dataset: bytes, transfer_syntax_uid: str) -> EncodedHeader | None:
    """Read a dataset's DICOM JSON and column values, or return None if not handled here.

    Raises
    ------
    InvalidDatasetError
        If Pixel Data or the elements after it are truncated.
    """
    implicit = _implicit_vr(transfer_syntax_uid)
    if implicit is None:
        return None
    walker = _Walker(dataset, implicit)
    try:
        text = walker.read_top_level()
    except (_Unsupported, UnicodeDecodeError, ValueError, struct.error):
        return None
    if walker.pixel_value_start >= 0:
        end = pixel_data_end(dataset, walker.pixel_value_start, walker.pixel_length)
        check_trailing_elements(dataset, end, implicit, True)
    values = dict.fromkeys(_COLUMN_TAGS.values(), "")
    for tag, value in walker.columns.items():
        values[_COLUMN_TAGS[tag]] = value
    return EncodedHeader(EncodedJSON(text), values, walker.specific_character_set)


def _implicit_vr(transfer_syntax_uid: str) -> bool | None:
    """Return whether the syntax is Implicit VR Little Endian; None if not handled here."""
    if transfer_syntax_uid in _syntaxes:
        return _syntaxes[transfer_syntax_uid]
    syntax = UID(transfer_syntax_uid)
    try:
        handled = (
            syntax.is_little_endian
            and not syntax.is_deflated
            and syntax not in DEFLATED_JPIP_SYNTAXES
        )
        result = syntax.is_implicit_VR if handled else None
    except ValueError:  # a UID that is not in pydicom's table of transfer syntaxes
        result = None
    if len(_syntaxes) < MAX_CACHED_SYNTAXES:  # files may name any UID
        _syntaxes[transfer_syntax_uid] = result
    return result


class _Walker:
    """One pass over a dataset's bytes, writing its DICOM JSON text.

    The text equals ``json.dumps`` of pydicom 3.0's ``Dataset.to_json_dict``
    with the archive's bulk data settings; any case where it might not
    raises :class:`_Unsupported`.
    """

    def __init__(self, data: bytes, implicit: bool) -> None:
        self.data = data
        self.implicit = implicit
        self.encoding = "latin_1"
        self.specific_character_set = ""
        # Column attribute tag to column value, for top-level elements.
        self.columns: dict[int, str] = {}
        self.pixel_value_start = -1
        self.pixel_length = 0

    def read_top_level(self) -> str:
        text, position = self.read_elements(0, len(self.data), top_level=True)
        if position != len(self.data) and self.pixel_value_start < 0:
            raise _Unsupported
        if text == "{}":
            raise _Unsupported  # the pydicom-based path reports an empty dataset
        return text

    def read_elements(
        self, position: int, end: int, top_level: bool = False, delimited: bool = False
    ) -> tuple[str, int]:
        """Read elements from ``position`` up to ``end`` or an item delimiter.

        Returns the JSON object's text and the position after the last element read.
        """
        data = self.data
        implicit = self.implicit
        fragments: list[str] = []
        previous = -1
        while position < end:
            if position + 8 > end:
                raise _Unsupported
            if implicit:
                group, number, length = _IMPLICIT_HEADER.unpack_from(data, position)
                tag = group << 16 | number
                if tag == ITEM_DELIMITATION and delimited:
                    return "{" + ", ".join(fragments) + "}", position + 8
                known = _IMPLICIT_VRS.get(tag)
                position += 8
                if known is None:
                    if not (top_level and tag in PIXEL_DATA_TAGS):
                        raise _Unsupported  # private, repeating, ambiguous or unknown VR
                    vr, kind, code = "OB", _BINARY, _VR_CODES["OB"]
                else:
                    vr, kind, code = known
            else:
                group, number, code, length = _HEADER.unpack_from(data, position)
                tag = group << 16 | number
                if tag == ITEM_DELIMITATION and delimited:
                    return "{" + ", ".join(fragments) + "}", position + 8
                explicit = _EXPLICIT_VRS.get(code)
                if explicit is None:
                    raise _Unsupported  # UN, or a VR pydicom may correct
                vr, kind, long_length = explicit
                if long_length:
                    if position + 12 > end:
                        raise _Unsupported
                    (length,) = _LENGTH.unpack_from(data, position + 8)
                    position += 12
                else:
                    position += 8

            # pydicom sorts elements by tag and keeps the last of equal tags.
            if tag <= previous or group == 0xFFFE:
                raise _Unsupported
            previous = tag
            if top_level and tag in PIXEL_DATA_TAGS:
                # The pydicom-based path stops here too, and checks the rest.
                self.pixel_value_start = position
                self.pixel_length = length
                break

            prefix = _PREFIXES.get(tag << 16 | code) or _prefix(tag, vr, code)
            if kind == _SEQUENCE:
                items, position = self.read_sequence(position, length, end)
                fragments.append(prefix + ', "Value": [' + items + "]}")
                continue
            if length == UNDEFINED_LENGTH:
                raise _Unsupported
            value_end = position + length
            if value_end > end:
                raise _Unsupported
            raw = data[position:value_end]
            position = value_end

            if kind == _BINARY:
                fragments.append(prefix + _binary_json(tag, raw))
                continue
            if tag == SPECIFIC_CHARACTER_SET:
                if not top_level:
                    raise _Unsupported
                self._set_character_set(raw)
            elif tag < SPECIFIC_CHARACTER_SET and kind in _CHARACTER_SET_KINDS:
                raise _Unsupported  # decoded before the character set is known
            # Most values repeat from file to file (modality, dates, image
            # attributes), so short ones are converted once; UIDs do not repeat.
            cacheable = length <= MAX_CACHED_LENGTH and kind != _UID
            key = (tag << 16 | code, raw, self.encoding)
            converted = _CONVERTED.get(key) if cacheable else None
            if converted is None:
                value, column = _VALUE_READERS[kind](vr, raw, self.encoding)
                closing = ', "Value": [' + value + "]}" if value else "}"
                converted = (prefix + closing, column)
                if cacheable:
                    if len(_CONVERTED) >= MAX_CACHED_VALUES:
                        _CONVERTED.clear()
                    _CONVERTED[key] = converted
            fragment, column = converted
            fragments.append(fragment)
            if top_level and tag in _COLUMN_TAGS:
                if column is None:
                    raise _Unsupported  # pydicom's text of the value differs from its JSON
                self.columns[tag] = column.strip(" \x00")
        else:
            if delimited:
                raise _Unsupported  # the item has no delimiter
        return "{" + ", ".join(fragments) + "}", position

    def read_sequence(self, position: int, length: int, end: int) -> tuple[str, int]:
        """Read a sequence's items; return their JSON text and the position after it."""
        data = self.data
        defined = length != UNDEFINED_LENGTH
        sequence_end = position + length if defined else end
        if sequence_end > end:
            raise _Unsupported
        items: list[str] = []
        while position < sequence_end:
            if position + 8 > sequence_end:
                raise _Unsupported
            group, number, item_length = _IMPLICIT_HEADER.unpack_from(data, position)
            tag = group << 16 | number
            position += 8
            if tag == SEQUENCE_DELIMITATION and not defined:
                return ", ".join(items), position
            if tag != ITEM:
                raise _Unsupported
            if item_length == UNDEFINED_LENGTH:
                item, position = self.read_elements(position, sequence_end, delimited=True)
            else:
                item_end = position + item_length
                if item_end > sequence_end:
                    raise _Unsupported
                item, position = self.read_elements(position, item_end)
                if position != item_end:
                    raise _Unsupported
            items.append(item)
        if not defined or position != sequence_end:
            raise _Unsupported
        return ", ".join(items), position

    def _set_character_set(self, raw: bytes) -> None:
        value = raw.decode("latin_1").rstrip(" \x00")
        encoding = ENCODINGS.get(value)
        if encoding is None:
            raise _Unsupported  # other character sets, or code extensions
        self.encoding = encoding
        self.specific_character_set = value


# Converted values by tag, VR code, raw value and text encoding: the JSON
# text of the element and its column value (see _VALUE_READERS). Bounded
# in entries and in the length of the values kept: an estimated 10 MB at most.
_CONVERTED: dict[tuple[int, bytes, str], tuple[str, str | None]] = {}
MAX_CACHED_VALUES = 20_000
MAX_CACHED_LENGTH = 64

# The start of an element's JSON text, '"00100010": {"vr": "PN"', by tag and
# VR code; filled as elements are read, up to a bound because private tags vary.
_PREFIXES: dict[int, str] = {}
_MAX_PREFIXES = 20_000


def _prefix(tag: int, vr: str, code: int) -> str:
    prefix = f'"{tag:08X}": {{"vr": "{vr}"'
    if len(_PREFIXES) < _MAX_PREFIXES:
        _PREFIXES[tag << 16 | code] = prefix
    return prefix


def _binary_json(tag: int, raw: bytes) -> str:
    """Return the JSON text of a binary value after the VR, with the closing brace."""
    if not raw:
        return "}"
    if len(raw) > MAX_INLINE_BINARY:
        # The same URI as header.header_to_json gives.
        return f', "BulkDataURI": "bulkdata/{tag:08X}"}}'
    return ', "InlineBinary": "' + base64.b64encode(raw).decode("ascii") + '"}'


# Each reader takes the VR, the raw value and the text encoding. It returns
# the JSON text of the "Value" array's items ('' for no value) and the column
# value as header.describe_instance computes it before stripping. The column
# value is None when it differs from the JSON form.


def _strings_json(items: list[str]) -> str:
    if len(items) == 1:
        return _encode_string(items[0]) if items[0] else ""
    return ", ".join([_encode_string(item) for item in items])


def _read_string(vr: str, raw: bytes, encoding: str) -> tuple[str, str | None]:
    # AS, CS, DA, DT, TM and UI are decoded as Latin-1 whatever the character set.
    items = raw.decode("latin_1").rstrip(" \x00").split("\\")
    return _strings_json(items), "\\".join(items)


def _read_application_entity(vr: str, raw: bytes, encoding: str) -> tuple[str, str | None]:
    items = [item.strip() for item in raw.decode("latin_1").split("\\")]
    return _strings_json(items), "\\".join(items)


def _read_uri(vr: str, raw: bytes, encoding: str) -> tuple[str, str | None]:
    text = raw.decode("latin_1").rstrip()
    return _strings_json([text]), text


def _read_text(vr: str, raw: bytes, encoding: str) -> tuple[str, str | None]:
    if b"\x1b" in raw:
        raise _Unsupported  # code extensions
    items = [item.rstrip("\x00 ") for item in raw.decode(encoding).split("\\")]
    return _strings_json(items), "\\".join(items)


def _read_single_text(vr: str, raw: bytes, encoding: str) -> tuple[str, str | None]:
    if b"\x1b" in raw:
        raise _Unsupported
    text = raw.decode(encoding).rstrip("\x00 ")
    return _strings_json([text]), text


def _read_person_name(vr: str, raw: bytes, encoding: str) -> tuple[str, str | None]:
    if b"\x1b" in raw:
        raise _Unsupported
    names = []
    for text in raw.rstrip(b"\x00 ").decode(encoding).split("\\"):
        groups = text.split("=")
        while groups and not groups[-1]:
            groups.pop()
        names.append(groups)
    if len(names) == 1 and not names[0]:
        return "", ""
    if not all(names):
        raise _Unsupported  # pydicom drops such an element from the JSON
    value = ", ".join([_person_name_json(groups) for groups in names])
    return value, "\\".join(["=".join(groups) for groups in names])


def _person_name_json(groups: list[str]) -> str:
    text = '{"Alphabetic": ' + _encode_string(groups[0])
    if len(groups) > 1:
        text += ', "Ideographic": ' + _encode_string(groups[1])
    if len(groups) > 2:
        text += ', "Phonetic": ' + _encode_string(groups[2])
    return text + "}"


def _read_integer_string(vr: str, raw: bytes, encoding: str) -> tuple[str, str | None]:
    items = raw.decode("latin_1").rstrip(" \x00").split("\\")
    if len(items) == 1 and not items[0].strip():
        return "", ""
    for item in items:
        if not _INTEGER.fullmatch(item):
            raise _Unsupported
    # pydicom's IS keeps the text without surrounding spaces as its string form.
    return ", ".join([repr(int(item)) for item in items]), "\\".join(
        [item.strip() for item in items]
    )


def _read_decimal_string(vr: str, raw: bytes, encoding: str) -> tuple[str, str | None]:
    text = raw.decode("latin_1").strip().rstrip(" \x00")
    if not text:
        return "", ""
    items = text.split("\\")
    for item in items:
        if not _DECIMAL.fullmatch(item):
            raise _Unsupported
    return ", ".join([_float_json(float(item)) for item in items]), text


def _read_number(vr: str, raw: bytes, encoding: str) -> tuple[str, str | None]:
    if not raw:
        return "", ""
    code, size = _NUMBER_FORMATS[vr]
    if len(raw) % size:
        raise _Unsupported
    numbers = struct.unpack(f"<{len(raw) // size}{code}", raw)
    if code in "fd":
        return ", ".join([_float_json(number) for number in numbers]), "\\".join(
            [str(number) for number in numbers]
        )
    text = ", ".join([str(number) for number in numbers])
    return text, text.replace(", ", "\\")


def _read_attribute_tag(vr: str, raw: bytes, encoding: str) -> tuple[str, str | None]:
    if len(raw) % 4:
        raise _Unsupported
    pairs = struct.unpack(f"<{len(raw) // 2}H", raw)
    tags = [f'"{pairs[i] << 16 | pairs[i + 1]:08X}"' for i in range(0, len(pairs), 2)]
    return ", ".join(tags), None


def _float_json(number: float) -> str:
    """Return a float as json.dumps writes it."""
    if number != number:
        return "NaN"
    if number in (math.inf, -math.inf):
        return "Infinity" if number > 0 else "-Infinity"
    return repr(number)


_VALUE_READERS = {
    _TEXT: _read_text,
    _SINGLE_TEXT: _read_single_text,
    _PERSON_NAME: _read_person_name,
    _STRING: _read_string,
    _APPLICATION_ENTITY: _read_application_entity,
    _UID: _read_string,
    _URI: _read_uri,
    _INTEGER_STRING: _read_integer_string,
    _DECIMAL_STRING: _read_decimal_string,
    _NUMBER: _read_number,
    _ATTRIBUTE_TAG: _read_attribute_tag,
}
_CHARACTER_SET_KINDS = frozenset((_TEXT, _SINGLE_TEXT, _PERSON_NAME))
