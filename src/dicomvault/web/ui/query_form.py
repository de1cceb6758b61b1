"""Turn the fields of the console's search form into one query language expression.

The form has a field per common key and a box for the query language. The
advanced text goes first, in parentheses, followed by one term per filled
field, all joined with AND.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping

from dicomvault.dicom.query_language import OPERATORS, SPECIAL

# Form fields holding a value of one keyword, in the order of the form.
KEYWORD_FIELDS: tuple[tuple[str, str], ...] = (
    ("PatientName", "Patient name"),
    ("PatientID", "Patient ID"),
    ("AccessionNumber", "Accession number"),
    ("StudyDescription", "Study description"),
    ("Modality", "Modality"),
)
DATE_FROM_FIELD = "StudyDateFrom"
DATE_TO_FIELD = "StudyDateTo"
ADVANCED_FIELD = "q"

# Keys that match every entity of a level, for a form with no field filled.
MATCH_ALL = {
    "patient": "PatientID:*",
    "study": "StudyInstanceUID:*",
    "series": "SeriesInstanceUID:*",
    "instance": "SOPInstanceUID:*",
}


class FormValueError(ValueError):
    """A form field has a value that cannot become a query term; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclasses.dataclass(frozen=True)
class FormQuery:
    """The combined query of a form and where the advanced text sits in it."""

    text: str
    advanced: str


def escape_value(value: str) -> str:
    """Return ``value`` as one query language word: special characters escaped, wildcards kept."""
    escaped = "".join(f"\\{char}" if char in SPECIAL or char == "\\" else char for char in value)
    if value.upper() in OPERATORS or value.startswith("-"):
        escaped = "\\" + escaped  # so that the word is not read as an operator or a NOT
    return escaped


def _date(field: str, value: str) -> str:
    """Return a date of an HTML date input (YYYY-MM-DD) or of DICOM (YYYYMMDD) as YYYYMMDD."""
    text = value.strip()
    for layout in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.datetime.strptime(text, layout).strftime("%Y%m%d")
        except ValueError:
            continue
    raise FormValueError(field, f"Invalid date {value!r}: use YYYY-MM-DD, such as 2024-01-31")


def build_query(form: Mapping[str, str], level: str) -> FormQuery:
    """Return the query language text of the search form ``form`` at ``level``.

    ``level`` is a key of MATCH_ALL. A form with no field filled matches
    every entity of the level.

    Raises
    ------
    FormValueError
        If a date field is not a date, or the dates are in reverse order.
    """
    advanced = form.get(ADVANCED_FIELD, "").strip()
    terms = []
    for keyword, _ in KEYWORD_FIELDS:
        value = form.get(keyword, "").strip()
        if value:
            terms.append(f"{keyword}:{escape_value(value)}")

    low = form.get(DATE_FROM_FIELD, "").strip()
    high = form.get(DATE_TO_FIELD, "").strip()
    if low or high:
        low_date = _date(DATE_FROM_FIELD, low) if low else "*"
        high_date = _date(DATE_TO_FIELD, high) if high else "*"
        if low and high and low_date > high_date:
            raise FormValueError(DATE_TO_FIELD, "The end of the date range is before its start")
        terms.append(f"StudyDate:[{low_date} TO {high_date}]")

    if advanced:
        terms.insert(0, f"({advanced})")
    if not terms:
        return FormQuery(MATCH_ALL[level], "")
    return FormQuery(" AND ".join(terms), advanced)
