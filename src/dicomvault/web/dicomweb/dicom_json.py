"""Build DICOM JSON (PS3.18 F.2) from index records and stored headers."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from dicomvault.dicom.matching import ReturnKey
from dicomvault.index.search import SearchResult

LOGGER = logging.getLogger(__name__)

# VRs whose JSON values are numbers (PS3.18 F.2.3).
INTEGER_STRING_VRS = frozenset({"IS"})
DECIMAL_STRING_VRS = frozenset({"DS"})
NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
RETRIEVE_URL_TAG = 0x00081190
INSTANCE_AVAILABILITY_TAG = 0x00080056
AVAILABLE_TRANSFER_SYNTAX_TAG = 0x00083002
PIXEL_DATA_TAG = "7FE00010"


def tag_key(tag: int) -> str:
    """Return the 8-digit upper-case hex key of a tag in a DICOM JSON object."""
    return f"{tag:08X}"


def element_from_strings(vr: str, values: Iterable[str]) -> dict[str, Any]:
    """Return a DICOM JSON element from DICOM string values.

    Person names become objects by component group, IS and DS values become
    numbers, and an empty string in a multi-valued element becomes null.
    Values that are not valid numbers for IS or DS are left out, so the
    element never carries a string where the model expects a number.
    """
    items = list(values)
    element: dict[str, Any] = {"vr": vr}
    if not items or (len(items) == 1 and items[0] == ""):
        return element
    converted = [_json_value(vr, item) for item in items]
    if any(value is _INVALID for value in converted):
        LOGGER.debug("Leaving out a %s value that is not a number: %r", vr, items)
        return element
    element["Value"] = converted
    return element


_INVALID = object()


def _json_value(vr: str, text: str) -> Any:
    stripped = text.strip(" \x00")
    if stripped == "":
        return None
    if vr == "PN":
        return person_name_json(stripped)
    if vr in INTEGER_STRING_VRS:
        try:
            return int(stripped)
        except ValueError:
            return _INVALID
    if vr in DECIMAL_STRING_VRS or vr in NUMBER_VRS:
        try:
            number = float(stripped)
        except ValueError:
            return _INVALID
        return int(number) if number.is_integer() and vr != "DS" else number
    return stripped


def person_name_json(value: str) -> dict[str, str]:
    """Return a PN value as its JSON object of component groups (PS3.18 F.2.2).

    Empty groups are left out: ``Doe^John==DO^JON`` has Alphabetic and Phonetic.
    """
    groups = value.split("=")
    names = ("Alphabetic", "Ideographic", "Phonetic")
    return {name: group for name, group in zip(names, groups, strict=False) if group}


def search_result_json(
    result: SearchResult,
    return_keys: Iterable[ReturnKey],
    retrieve_url: str,
    instance_url: str | None = None,
    extra: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Return the DICOM JSON object of one QIDO-RS match.

    Every return key is present, with the archive's value or without a
    "Value" when it has none. Attributes in ``extra`` (the stored header for
    ``includefield=all``) come first and are overridden by the return keys.
    Relative BulkDataURIs of the stored header become absolute under
    ``instance_url``; without it, binary values are left out.
    """
    obj: dict[str, Any] = {}
    obj.update(extra or {})
    for return_key in return_keys:
        obj[tag_key(return_key.tag)] = _return_key_element(return_key, result, retrieve_url)
    obj[tag_key(RETRIEVE_URL_TAG)] = {"vr": "UR", "Value": [retrieve_url]}
    if result.transfer_syntax_uid:
        obj[tag_key(AVAILABLE_TRANSFER_SYNTAX_TAG)] = {
            "vr": "UI",
            "Value": [result.transfer_syntax_uid],
        }
    return sorted_object(resolve_bulk_data(obj, instance_url))


def _return_key_element(key: ReturnKey, result: SearchResult, retrieve_url: str) -> dict[str, Any]:
    if key.tag == INSTANCE_AVAILABILITY_TAG:
        return {"vr": "CS", "Value": ["ONLINE"]}
    if key.tag == RETRIEVE_URL_TAG:
        return {"vr": "UR", "Value": [retrieve_url]}
    stored = result.elements.get(key.tag)
    if stored is not None:
        return _select_item_keys(stored, key)
    values = result.record.get(key.keyword) if key.keyword else None
    if values and key.vr != "SQ":
        return element_from_strings(key.vr, [str(value) for value in values])
    return {"vr": key.vr}


def _select_item_keys(stored: dict[str, Any], key: ReturnKey) -> dict[str, Any]:
    if stored.get("vr") != "SQ" or not key.item_tags:
        return stored
    requested = {tag_key(tag) for tag in key.item_tags}
    selected = copy.deepcopy(stored)
    selected["Value"] = [
        {tag: value for tag, value in item.items() if tag in requested}
        for item in stored.get("Value") or []
    ]
    return selected


def resolve_bulk_data(obj: dict[str, Any], instance_url: str | None) -> dict[str, Any]:
    """Return ``obj`` with relative BulkDataURIs made absolute under ``instance_url``.

    The index stores URIs relative to the instance (``bulkdata/00420011``).
    When ``instance_url`` is None, elements with a BulkDataURI are removed.
    """
    resolved: dict[str, Any] = {}
    for key, element in obj.items():
        if not isinstance(element, dict):
            resolved[key] = element
            continue
        uri = element.get("BulkDataURI")
        if uri is not None:
            if instance_url is None:
                continue
            if not str(uri).startswith(("http://", "https://")):
                element = {**element, "BulkDataURI": f"{instance_url}/{uri}"}
        elif element.get("vr") == "SQ" and element.get("Value"):
            element = {
                **element,
                "Value": [
                    resolve_bulk_data(item, instance_url) if isinstance(item, dict) else item
                    for item in element["Value"]
                ],
            }
        resolved[key] = element
    return resolved


def sorted_object(obj: dict[str, Any]) -> dict[str, Any]:
    """Return ``obj`` with its attributes in ascending tag order."""
    return {key: obj[key] for key in sorted(obj)}


def instance_metadata(
    header: dict[str, Any], instance_url: str, transfer_syntax_uid: str
) -> dict[str, Any]:
    """Return the WADO-RS metadata of one instance from its stored header.

    BulkDataURIs become absolute. An image also gets a BulkDataURI for Pixel
    Data (the stored header stops before it), and every instance gets
    Available Transfer Syntax UID (0008,3002) with its stored transfer syntax.
    """
    obj = resolve_bulk_data(header, instance_url)
    if "00280010" in header and PIXEL_DATA_TAG not in obj:
        bits = _first_number(header.get("00280100"))
        encapsulated = transfer_syntax_uid not in NATIVE_SYNTAXES
        vr = "OW" if not encapsulated and bits is not None and bits > 8 else "OB"
        obj[PIXEL_DATA_TAG] = {"vr": vr, "BulkDataURI": f"{instance_url}/bulkdata/{PIXEL_DATA_TAG}"}
    obj[tag_key(AVAILABLE_TRANSFER_SYNTAX_TAG)] = {"vr": "UI", "Value": [transfer_syntax_uid]}
    return sorted_object(obj)


NATIVE_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.1.99",
    }
)


def _first_number(element: Any) -> int | None:
    if not isinstance(element, dict):
        return None
    values = element.get("Value") or []
    if values and isinstance(values[0], (int, float)):
        return int(values[0])
    return None
