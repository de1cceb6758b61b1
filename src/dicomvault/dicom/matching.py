"""Query model: turn a C-FIND identifier into conditions, and match values (PS3.4 C.2.2.2).

A :class:`Query` is independent of the protocol that carried it. DIMSE C-FIND
builds one from an Identifier dataset; DICOMweb and the console build the same
object. The index turns conditions on column attributes into SQL that selects
a superset of the matches, then :meth:`Condition.matches` decides each
candidate, so the rules below are the single source of truth.

Supported matching types: universal, single value, wildcard (``*`` and ``?``),
range (DA, TM, DT, and combined date and time), list of UIDs (and lists of
values for other VRs), and sequence matching (one item of sub-keys).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicomvault.dicom.attributes import (
    COMPUTED_ATTRIBUTES,
    CONTROL_KEYWORDS,
    Level,
    level_of_keyword,
)

LOGGER = logging.getLogger(__name__)

DATE_TIME_VRS = frozenset({"DA", "TM", "DT"})
# The only VRs whose values are matched with wildcards (PS3.4 C.2.2.2.4);
# '*' and '?' in other VRs are literal characters.
WILDCARD_VRS = frozenset(["AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"])
# Combined date and time pairs (PS3.4 C.2.2.2.5.2).
DATE_TIME_PAIRS: dict[str, str] = {
    "StudyDate": "StudyTime",
    "SeriesDate": "SeriesTime",
    "ContentDate": "ContentTime",
    "AcquisitionDate": "AcquisitionTime",
    "PatientBirthDate": "PatientBirthTime",
}

_DA_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TM_RE = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?$")
_DT_RE = re.compile(
    r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?$"
)


class QueryError(ValueError):
    """The identifier cannot be used for matching; the message names the key and the reason."""


class MatchKind(enum.Enum):
    """The matching types of PS3.4 C.2.2.2."""

    SINGLE = "single value"
    WILDCARD = "wildcard"
    RANGE = "range"
    LIST = "list"
    SEQUENCE = "sequence"
    DATE_TIME_RANGE = "combined date and time range"


@dataclasses.dataclass(frozen=True)
class Condition:
    """One matching key with a value, normalized for comparison.

    Attributes
    ----------
    keyword : str
        DICOM keyword of the key (for combined date-time, the date keyword).
    vr : str
        VR of the key.
    kind : MatchKind
        Matching type.
    value : str
        Normalized single value or wildcard pattern (upper case when
        ``case_insensitive``).
    values : tuple of str
        List items for LIST; each may hold wildcards.
    low, high : str or None
        Normalized range bounds; None is an open end.
    items : tuple of Condition
        Sub-key conditions of a sequence item for SEQUENCE.
    time_keyword : str
        For DATE_TIME_RANGE, the TM keyword paired with ``keyword``.
    case_insensitive : bool
        Whether values are compared without regard to case (PN by default).
    """

    keyword: str
    vr: str
    kind: MatchKind
    value: str = ""
    values: tuple[str, ...] = ()
    low: str | None = None
    high: str | None = None
    items: tuple[Condition, ...] = ()
    time_keyword: str = ""
    case_insensitive: bool = False
    range_form: str = ""  # RANGE only: "single", "closed", "from" or "to"

    def matches(self, record: Mapping[str, Sequence[Any]]) -> bool:
        """Return whether a stored entity matches this condition.

        ``record`` maps keywords to the entity's values: a list of strings for
        ordinary attributes, a list of DICOM JSON items for sequences. A
        missing keyword counts as an empty value, which matches no
        condition.
        """
        if self.kind is MatchKind.DATE_TIME_RANGE:
            dates = record.get(self.keyword) or [""]
            times = record.get(self.time_keyword) or [""]
            return _match_combined(str(dates[0]), str(times[0]), self.low, self.high)
        stored = record.get(self.keyword) or []
        if self.kind is MatchKind.SEQUENCE:
            return any(_match_item(item, self.items) for item in stored)
        return any(self._match_value(str(value)) for value in stored)

    def _match_value(self, stored: str) -> bool:
        text = normalize_value(stored, self.vr, self.case_insensitive)
        if self.kind is MatchKind.SINGLE:
            return _match_single(text, self.value, self.vr)
        if self.kind is MatchKind.WILDCARD:
            return _match_wildcard(text, self.value, self.vr)
        if self.kind is MatchKind.LIST:
            return any(
                _match_wildcard(text, item, self.vr)
                if has_wildcard(item)
                else _match_single(text, item, self.vr)
                for item in self.values
            )
        if self.kind is MatchKind.RANGE:
            return _match_range(stored, self.vr, self.low, self.high)
        raise AssertionError(self.kind)


@dataclasses.dataclass(frozen=True)
class ReturnKey:
    """A key the response carries, in the order of the request."""

    tag: int
    keyword: str
    vr: str
    item_tags: tuple[int, ...] | None = None  # requested sub-keys of a sequence


@dataclasses.dataclass(frozen=True)
class MatchOptions:
    """Matching behaviour chosen by settings and association negotiation."""

    person_name_case_insensitive: bool = True
    combined_date_time: bool = False


class Filter(Protocol):
    """A boolean expression over records, such as one of the console's query language."""

    def matches(self, record: Mapping[str, Sequence[Any]]) -> bool:
        """Return whether ``record`` matches the expression."""
        ...


@dataclasses.dataclass(frozen=True)
class Query:
    """A search over one level of the Patient/Study/Series/Instance hierarchy.

    A record matches when it matches every condition and, if there is one,
    the ``expression`` (whose keywords ``expression_keywords`` lists).
    """

    level: Level
    conditions: tuple[Condition, ...]
    return_keys: tuple[ReturnKey, ...]
    information_model: str = "STUDY"  # "PATIENT" or "STUDY" root
    expression: Filter | None = None
    expression_keywords: frozenset[str] = frozenset()

    def matches(self, record: Mapping[str, Sequence[Any]]) -> bool:
        """Return whether a stored entity matches every condition and the expression."""
        if not all(condition.matches(record) for condition in self.conditions):
            return False
        return self.expression is None or self.expression.matches(record)

    @property
    def keywords(self) -> set[str]:
        """Keywords whose values matching and the response need."""
        names = {key.keyword for key in self.return_keys}
        names.update(self.expression_keywords)
        for condition in self.conditions:
            names.add(condition.keyword)
            if condition.time_keyword:
                names.add(condition.time_keyword)
        return names


# --- Building a query from an identifier -------------------------------------------------


def parse_identifier(
    identifier: Dataset,
    information_model: str = "STUDY",
    options: MatchOptions | None = None,
) -> Query:
    """Build a :class:`Query` from a C-FIND Identifier.

    Parameters
    ----------
    identifier : pydicom.dataset.Dataset
        The request Identifier, decoded with its Specific Character Set.
    information_model : str
        ``"PATIENT"`` or ``"STUDY"`` for Patient Root or Study Root.
    options : MatchOptions, optional
        Case sensitivity of person names and combined date-time matching.

    Returns
    -------
    Query

    Raises
    ------
    QueryError
        If Query/Retrieve Level is missing or invalid, the level does not
        exist in the information model, or a matching key has a value that
        cannot be matched (such as a malformed date range).
    """
    options = options or MatchOptions()
    level = _parse_level(identifier, information_model)

    try:
        conditions, return_keys = _parse_keys(identifier, level, options)
    except QueryError:
        raise
    except Exception as exc:  # pydicom raises many types for undecodable values
        raise QueryError(f"The identifier has a value that cannot be decoded: {exc}") from exc

    if options.combined_date_time:
        conditions = _combine_date_time(conditions)
    _reject_reversed_time_ranges(conditions)
    return Query(level, tuple(conditions), tuple(return_keys), information_model)


def _parse_keys(
    identifier: Dataset, level: Level, options: MatchOptions
) -> tuple[list[Condition], list[ReturnKey]]:
    conditions: list[Condition] = []
    return_keys: list[ReturnKey] = []
    for element in identifier:
        keyword = element.keyword or ""
        if element.tag.element == 0 or element.tag.group == 0x0002:
            continue  # group lengths and file meta are not keys
        if keyword in {"QueryRetrieveLevel", "SpecificCharacterSet"}:
            continue
        return_keys.append(_return_key(element))
        if keyword in CONTROL_KEYWORDS or not keyword:
            continue
        key_level = level_of_keyword(keyword)
        if key_level is not None and key_level > level:
            LOGGER.debug("Ignoring matching key %s below query level %s", keyword, level.name)
            continue
        condition = parse_condition(element, options)
        if condition is not None:
            conditions.append(condition)
    return conditions, return_keys


def _parse_level(identifier: Dataset, information_model: str) -> Level:
    if "QueryRetrieveLevel" not in identifier:
        raise QueryError("The identifier has no Query/Retrieve Level (0008,0052)")
    try:
        level = Level.from_dicom(str(identifier.QueryRetrieveLevel or ""))
    except ValueError as exc:
        raise QueryError(str(exc)) from None
    if information_model == "STUDY" and level is Level.PATIENT:
        raise QueryError(
            "Query/Retrieve Level PATIENT is not part of the Study Root information model; "
            "use Patient Root or level STUDY"
        )
    return level


def _reject_reversed_time_ranges(conditions: Iterable[Condition]) -> None:
    for condition in conditions:
        reversed_range = (
            condition.low is not None
            and condition.high is not None
            and (condition.low > condition.high)
        )
        if condition.vr == "TM" and condition.kind is MatchKind.RANGE and reversed_range:
            # PS3.4 C.2.2.2.5.1 does not support TM ranges across midnight.
            raise QueryError(
                f"Invalid range in {condition.keyword}: the lower bound is after the upper "
                "bound; time ranges across midnight need a date range with combined date "
                "and time matching, or a DT attribute"
            )


def _return_key(element: DataElement) -> ReturnKey:
    item_tags: tuple[int, ...] | None = None
    if element.VR == "SQ":
        items = element.value or []
        item_tags = tuple(int(e.tag) for e in items[0]) if len(items) > 0 else ()
    return ReturnKey(int(element.tag), element.keyword or "", element.VR, item_tags)


def parse_condition(element: DataElement, options: MatchOptions) -> Condition | None:
    """Return the condition of one identifier element, or None for universal matching.

    Raises
    ------
    QueryError
        If the value cannot be matched for the element's VR.
    """
    keyword = element.keyword or f"({element.tag.group:04X},{element.tag.element:04X})"
    vr = element.VR
    if vr == "SQ":
        return _parse_sequence(element, keyword, options)

    raw = _element_text(element)
    if raw is None:
        return None
    case_insensitive = vr == "PN" and options.person_name_case_insensitive

    if vr in DATE_TIME_VRS:
        return _parse_date_time(keyword, vr, raw)
    if "\\" in raw:
        items = tuple(normalize_value(item, vr, case_insensitive) for item in raw.split("\\"))
        if vr == "UI" and any(has_wildcard(item) for item in items):
            raise QueryError(f"{keyword} is a list of UIDs and may not contain wildcards")
        return Condition(
            keyword, vr, MatchKind.LIST, values=items, case_insensitive=case_insensitive
        )

    value = normalize_value(raw, vr, case_insensitive)
    if value.strip("*") == "" and "*" in value:
        return None  # a key of only "*" is universal matching (PS3.4 C.2.2.2.4)
    if has_wildcard(value) and vr in WILDCARD_VRS:
        return Condition(
            keyword, vr, MatchKind.WILDCARD, value=value, case_insensitive=case_insensitive
        )
    return Condition(keyword, vr, MatchKind.SINGLE, value=value, case_insensitive=case_insensitive)


def _element_text(element: DataElement) -> str | None:
    """Return the element's value as DICOM string form, or None when it is empty."""
    value = element.value
    if value is None or value == "" or (isinstance(value, (list, tuple)) and len(value) == 0):
        return None
    if isinstance(value, (bytes, bytearray)):
        return None  # binary values are never matching keys
    if element.VM > 1 and not isinstance(value, str):
        parts = [str(v) for v in value]
    else:
        parts = [str(value)]
    text = "\\".join(parts)
    if text.strip(" \x00") == "":
        return None
    return text


def _parse_sequence(element: DataElement, keyword: str, options: MatchOptions) -> Condition | None:
    items = element.value or []
    if len(items) == 0:
        return None
    if len(items) > 1:
        raise QueryError(
            f"Sequence matching key {keyword} has {len(items)} items; "
            "a matching key may contain a single item"
        )
    sub_conditions = []
    for sub_element in items[0]:
        sub = parse_condition(sub_element, options)
        if sub is not None:
            sub_conditions.append(sub)
    if not sub_conditions:
        return None  # an item with only empty keys is a return key
    return Condition(keyword, "SQ", MatchKind.SEQUENCE, items=tuple(sub_conditions))


def _parse_date_time(keyword: str, vr: str, raw: str) -> Condition:
    text = raw.strip()
    if "\\" in text:
        raise QueryError(f"{keyword} ({vr}) may not hold a list of values, got '{text}'")
    if "-" in text and not (vr == "DT" and _is_datetime(text)):
        low_text, _, high_text = _split_range(text, vr)
        low = normalize_bound(low_text, vr, upper=False, keyword=keyword) if low_text else None
        high = normalize_bound(high_text, vr, upper=True, keyword=keyword) if high_text else None
        if low is None and high is None:
            raise QueryError(f"Invalid range '{text}' in {keyword}: both bounds are empty")
        # A reversed TM range is valid only when combined with a date range
        # (PS3.4 C.2.2.2.5.2); parse_identifier rejects it otherwise.
        if vr != "TM" and low is not None and high is not None and low > high:
            raise QueryError(
                f"Invalid range '{text}' in {keyword}: the lower bound is after the upper bound"
            )
        if low is not None and high is not None:
            form = "closed"
        elif low is not None:
            form = "from"
        else:
            form = "to"
        return Condition(keyword, vr, MatchKind.RANGE, low=low, high=high, range_form=form)

    low = normalize_bound(text, vr, upper=False, keyword=keyword)
    high = normalize_bound(text, vr, upper=True, keyword=keyword)
    return Condition(keyword, vr, MatchKind.RANGE, low=low, high=high, range_form="single")


def _is_datetime(text: str) -> bool:
    """Return whether ``text`` is one DT value; a '-HHMM' suffix must be a real UTC offset."""
    match = _DT_RE.match(text)
    if not match:
        return False
    offset = match.group(8)
    return offset is None or (int(offset[1:3]) <= 14 and int(offset[3:5]) <= 59)


def _split_range(text: str, vr: str) -> tuple[str, str, str]:
    """Split 'low-high' where a DT bound may carry a '-HHMM' UTC offset."""
    if vr != "DT":
        return text.partition("-")
    # A DT range is two DT values joined by '-'; try each split position.
    for index, char in enumerate(text):
        if char != "-":
            continue
        low, high = text[:index], text[index + 1 :]
        if (not low or _is_datetime(low)) and (not high or _is_datetime(high)):
            return low, "-", high
    return text.partition("-")


def _combine_date_time(conditions: list[Condition]) -> list[Condition]:
    """Merge DA and TM range conditions of one pair into a DT range (PS3.4 C.2.2.2.5.2)."""
    by_keyword = {c.keyword: c for c in conditions}
    merged = list(conditions)
    for date_keyword, time_keyword in DATE_TIME_PAIRS.items():
        date = by_keyword.get(date_keyword)
        time = by_keyword.get(time_keyword)
        if date is None or time is None:
            continue
        if date.kind is not MatchKind.RANGE or time.kind is not MatchKind.RANGE:
            continue
        if date.range_form != time.range_form:
            continue  # different forms of range match independently (PS3.4 C.2.2.2.5.2)
        low = None
        if date.low is not None:
            low = date.low + (time.low if time.low is not None else "000000.000000")
        high = None
        if date.high is not None:
            high = date.high + (time.high if time.high is not None else "235959.999999")
        merged.remove(date)
        merged.remove(time)
        merged.append(
            Condition(
                date_keyword,
                "DA",
                MatchKind.DATE_TIME_RANGE,
                low=low,
                high=high,
                time_keyword=time_keyword,
            )
        )
    return merged


def fuzzy_person_name_conditions(condition: Condition) -> list[Condition]:
    """Return the conditions of fuzzy person name matching for a PN condition.

    Each word of the value (split at spaces, '^', '=' and ',') must begin a
    component of the stored name, without regard to case, so ``john d``
    finds ``DOE^JOHN``. A value with wildcards, a list, or a key of another
    VR keeps its usual matching. This is the archive's meaning of QIDO-RS
    ``fuzzymatching=true``; the standard leaves the rules to the archive.
    """
    if condition.vr != "PN" or condition.kind is not MatchKind.SINGLE:
        return [condition]
    words = [word for word in re.split(r"[ ^=,]+", fold_case(condition.value)) if word]
    if not words:
        return [condition]
    return [
        Condition(
            condition.keyword,
            "PN",
            MatchKind.LIST,
            values=(f"{word}*", f"*^{word}*", f"*={word}*", f"* {word}*"),
            case_insensitive=True,
        )
        for word in words
    ]


# --- Normalization -----------------------------------------------------------------------


def has_wildcard(value: str) -> bool:
    """Return whether a matching value contains ``*`` or ``?``."""
    return "*" in value or "?" in value


def normalize_value(value: str, vr: str, case_insensitive: bool = False) -> str:
    """Return ``value`` in the form used for comparison.

    Padding is not significant (PS3.5 6.2): trailing spaces and NULs are
    removed, and leading spaces too except for texts (LT, ST, UT). Person
    names also lose empty trailing components and component groups, so
    ``DOE^JOHN^^`` equals ``DOE^JOHN``.
    """
    text = value.rstrip(" \x00")
    if vr not in {"LT", "ST", "UT"}:
        text = text.lstrip(" ")
    if vr == "PN":
        text = normalize_person_name(text)
        if case_insensitive:
            text = fold_case(text)
    return text


def fold_case(text: str) -> str:
    """Upper-case ``text`` character by character, keeping its length.

    Characters whose upper case is longer (such as 'ß' -> 'SS') stay as they
    are, so '?' in a pattern still stands for exactly one character.
    """
    return "".join(upper if len(upper := char.upper()) == 1 else char for char in text)


def normalize_person_name(value: str) -> str:
    """Remove empty trailing components and component groups of a PN value."""
    groups = [group.rstrip("^ ") for group in value.split("=")]
    while groups and groups[-1] == "":
        groups.pop()
    return "=".join(groups)


def normalize_bound(text: str, vr: str, upper: bool, keyword: str = "") -> str:
    """Return a DA, TM or DT value padded so that strings compare as instants.

    The lower bound pads missing components with their minimum and the upper
    bound with their maximum, so ``1030`` is ``103000.000000`` as a lower
    bound and ``103059.999999`` as an upper bound. TM gives ``HHMMSS.FFFFFF``
    and DT gives ``YYYYMMDDHHMMSS.FFFFFF``; DT UTC offsets are dropped.

    Raises
    ------
    QueryError
        If ``text`` is not a valid value of the VR.
    """
    name = keyword or vr
    stripped = text.strip()
    if vr == "DA":
        return _normalize_date(stripped, name)
    if vr == "TM":
        return _normalize_time(stripped, upper, name)
    if vr == "DT":
        return _normalize_datetime(stripped, upper, name)
    raise AssertionError(vr)


def _normalize_date(text: str, name: str) -> str:
    compact = text.replace(".", "") if len(text) == 10 else text  # ACR-NEMA YYYY.MM.DD
    match = _DA_RE.match(compact)
    if not match or not _is_calendar_date(int(match[1]), int(match[2]), int(match[3])):
        raise QueryError(
            f"Invalid date '{text}' in {name}: expected YYYYMMDD, a range YYYYMMDD-YYYYMMDD, "
            "or an open range YYYYMMDD- or -YYYYMMDD"
        )
    return compact


def _is_calendar_date(year: int, month: int, day: int) -> bool:
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    return True


def _normalize_time(text: str, upper: bool, name: str) -> str:
    compact = text.replace(":", "")
    match = _TM_RE.match(compact)
    if not match:
        raise QueryError(
            f"Invalid time '{text}' in {name}: expected HH, HHMM, HHMMSS or HHMMSS.FFFFFF, "
            "or a range of those joined by '-'"
        )
    hours, minutes, seconds, fraction = match.groups()
    if int(hours) > 23 or int(minutes or 0) > 59 or int(seconds or 0) > 60:
        raise QueryError(f"Invalid time '{text}' in {name}: a component is out of range")
    fill = "9" if upper else "0"
    minutes = minutes or ("59" if upper else "00")
    seconds = seconds or ("59" if upper else "00")
    fraction = (fraction or "").ljust(6, fill)
    return f"{hours}{minutes}{seconds}.{fraction}"


def _normalize_datetime(text: str, upper: bool, name: str) -> str:
    match = _DT_RE.match(text) if _is_datetime(text) else None
    if not match:
        raise QueryError(
            f"Invalid date-time '{text}' in {name}: expected YYYYMMDDHHMMSS.FFFFFF with "
            "optional trailing components and UTC offset, or a range joined by '-'"
        )
    year, month, day, hours, minutes, seconds, fraction, offset = match.groups()
    if month and not 1 <= int(month) <= 12:
        raise QueryError(f"Invalid date-time '{text}' in {name}: month out of range")
    if day and not 1 <= int(day) <= 31:
        raise QueryError(f"Invalid date-time '{text}' in {name}: day out of range")
    month = month or ("12" if upper else "01")
    day = day or ("31" if upper else "01")
    has_hours = hours is not None
    hours = hours or ("23" if upper else "00")
    minutes = minutes or ("59" if upper else "00")
    seconds = seconds or ("59" if upper else "00")
    fraction = (fraction or "").ljust(6, "9" if upper else "0")
    normalized = f"{year}{month}{day}{hours}{minutes}{seconds}.{fraction}"
    if offset and has_hours:
        normalized = _to_utc(normalized, offset, text, name)
    # NOTE: a value without UTC offset is compared as if it were UTC, so
    # comparing it with a value that has an offset is off by the local
    # offset; Timezone Offset From UTC (0008,0201) is not applied.
    return normalized


def _to_utc(normalized: str, offset: str, text: str, name: str) -> str:
    try:
        local = datetime.datetime.strptime(normalized[:14], "%Y%m%d%H%M%S")
    except ValueError:
        raise QueryError(f"Invalid date-time '{text}' in {name}: not a calendar date") from None
    sign = 1 if offset[0] == "+" else -1
    delta = datetime.timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
    return (local - sign * delta).strftime("%Y%m%d%H%M%S") + normalized[14:]


@functools.lru_cache(maxsize=4096)
def normalize_stored_time(value: str, vr: str) -> str:
    """Return the lower-bound normal form of a stored DA/TM/DT value, or '' if invalid.

    The index keeps this form in match columns so SQL range conditions compare
    strings; an invalid stored value gets '' and only matches universally.
    Results are cached: the instances of a study repeat most dates and times.
    """
    if not value.strip():
        return ""
    try:
        return normalize_bound(value, vr, upper=False)
    except QueryError:
        return ""


# --- Value comparison --------------------------------------------------------------------


def _match_single(stored: str, value: str, vr: str) -> bool:
    if vr == "PN" and "=" not in value:
        # A name without component groups matches any group of the stored
        # name, so 'Yamada^Tarou' finds 'Yamada^Tarou=山田^太郎'.
        return stored == value or value in stored.split("=")
    return stored == value


def _match_wildcard(stored: str, pattern: str, vr: str) -> bool:
    regex = wildcard_regex(pattern)
    if regex.fullmatch(stored):
        return True
    if vr == "PN" and "=" not in pattern:
        return any(regex.fullmatch(group) for group in stored.split("="))
    return False


def wildcard_regex(pattern: str) -> re.Pattern[str]:
    """Compile a DICOM wildcard pattern: ``*`` any run of characters, ``?`` one character."""
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def _match_range(stored: str, vr: str, low: str | None, high: str | None) -> bool:
    stored_low = normalize_stored_time(stored, vr)
    if not stored_low:
        return False
    if vr == "DA":
        # Dates are whole days: compare the day itself.
        return (low is None or stored_low >= low) and (high is None or stored_low <= high)
    stored_high = normalize_bound(stored, vr, upper=True)
    # A stored value with reduced precision is an interval; it matches when
    # the interval overlaps the requested range.
    return (low is None or stored_high >= low) and (high is None or stored_low <= high)


def _match_combined(date: str, time: str, low: str | None, high: str | None) -> bool:
    stored_date = normalize_stored_time(date, "DA")
    if not stored_date:
        return False
    stored_time_low = normalize_stored_time(time, "TM") or "000000.000000"
    try:
        stored_time_high = normalize_bound(time, "TM", upper=True) if time.strip() else None
    except QueryError:
        stored_time_high = None
    stored_low = stored_date + stored_time_low
    stored_high = stored_date + (stored_time_high or "235959.999999")
    return (low is None or stored_high >= low) and (high is None or stored_low <= high)


def _match_item(item: Any, conditions: Iterable[Condition]) -> bool:
    if not isinstance(item, Mapping):
        return False
    record = json_item_record(item)
    return all(condition.matches(record) for condition in conditions)


def json_item_record(item: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Return keyword -> values for one DICOM JSON object (a dataset or sequence item)."""
    record: dict[str, list[Any]] = {}
    for tag_text, element in item.items():
        keyword = keyword_for_tag(int(tag_text, 16)) or tag_text
        record[keyword] = json_element_values(element)
    return record


def json_element_values(element: Mapping[str, Any]) -> list[Any]:
    """Return the values of one DICOM JSON element as strings, or items for SQ."""
    values = element.get("Value") or []
    vr = element.get("vr", "")
    if vr == "SQ":
        return list(values)
    if vr == "PN":
        return [person_name_from_json(v) for v in values]
    return ["" if v is None else str(v) for v in values]


def person_name_from_json(value: Any) -> str:
    """Return the DICOM string form ``alphabetic=ideographic=phonetic`` of a JSON PN value."""
    if isinstance(value, str):
        return value
    if not isinstance(value, Mapping):
        return ""
    groups = [value.get("Alphabetic", ""), value.get("Ideographic", ""), value.get("Phonetic", "")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def keyword_vr(keyword: str, tag: int | None = None) -> str:
    """Return the dictionary VR of a keyword or tag, 'UN' when unknown."""
    try:
        return str(dictionary_VR(Tag(tag if tag is not None else keyword)))
    except (KeyError, ValueError):
        return "UN"


__all__ = [
    "COMPUTED_ATTRIBUTES",
    "Condition",
    "Level",
    "MatchKind",
    "MatchOptions",
    "Query",
    "QueryError",
    "ReturnKey",
    "fuzzy_person_name_conditions",
    "parse_identifier",
]
