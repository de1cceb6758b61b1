"""Turn a pydicom Dataset into rows for the instance page's tag table, sequences nested."""

from __future__ import annotations

import dataclasses

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

# Values longer than this are cut, with the full length stated.
MAX_VALUE_CHARACTERS = 300
# VRs whose values are bytes or long binary arrays: shown as their length.
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW"})


@dataclasses.dataclass(frozen=True)
class TagRow:
    """One element: tag as (gggg,eeee), keyword, name, VR, shown value; items for a sequence."""

    tag: str
    keyword: str
    name: str
    vr: str
    value: str
    items: tuple[tuple[TagRow, ...], ...] = ()

    @property
    def is_sequence(self) -> bool:
        """Whether the element is a sequence (VR SQ)."""
        return self.vr == "SQ"


def format_value(element: DataElement) -> str:
    """Return the value of a non-sequence element as text, binary values as their length."""
    value = element.value
    if value is None or value == "":
        return ""
    if element.VR in BINARY_VRS or isinstance(value, bytes | bytearray):
        size = len(value) if hasattr(value, "__len__") else 0
        return f"({size} bytes)"
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        text = "\\".join(str(item) for item in value)
    else:
        text = str(value)
    if len(text) > MAX_VALUE_CHARACTERS:
        return f"{text[:MAX_VALUE_CHARACTERS]}… ({len(text)} characters)"
    return text


def _row(element: DataElement) -> TagRow:
    tag = f"({element.tag.group:04X},{element.tag.element:04X})"
    if element.VR == "SQ":
        items = tuple(dump(item) for item in element.value)
        return TagRow(tag, element.keyword, element.name, "SQ", f"{len(items)} items", items)
    return TagRow(tag, element.keyword, element.name, element.VR, format_value(element))


def dump(ds: Dataset) -> tuple[TagRow, ...]:
    """Return a row per element of ``ds`` in tag order, with nested rows for sequence items."""
    return tuple(_row(element) for element in ds)
