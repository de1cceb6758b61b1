"""Jinja2 filters that show DICOM values the way people read them: names, dates, times."""

from __future__ import annotations

from collections.abc import Sequence


def first_value(values: Sequence[str] | None) -> str:
    """Return the first of an attribute's values, or '' when it has none."""
    return str(values[0]) if values else ""


def person_name(value: str) -> str:
    """Return a PN value as "Family, Given Middle" (PS3.5 6.2), its first component group only.

    Empty components are left out, so "DOE^JOHN" becomes "DOE, JOHN" and
    "DOE" stays "DOE".
    """
    alphabetic = value.split("=")[0]
    parts = [part.strip() for part in alphabetic.split("^")]
    family = parts[0] if parts else ""
    rest = " ".join(part for part in parts[1:] if part)
    if family and rest:
        return f"{family}, {rest}"
    return family or rest


def dicom_date(value: str) -> str:
    """Return a DA value YYYYMMDD as YYYY-MM-DD; other values unchanged."""
    text = value.strip()
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text


def dicom_time(value: str) -> str:
    """Return a TM value HHMMSS.FFFFFF as HH:MM:SS, dropping the fraction."""
    text = value.strip().split(".")[0]
    if len(text) >= 4 and text.isdigit():
        pieces = [text[i : i + 2] for i in range(0, min(len(text), 6), 2)]
        return ":".join(pieces)
    return value.strip()


FILTERS = {
    "first_value": first_value,
    "person_name": person_name,
    "dicom_date": dicom_date,
    "dicom_time": dicom_time,
}
