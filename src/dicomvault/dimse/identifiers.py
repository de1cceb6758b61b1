"""Build C-FIND response identifiers from search results."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomvault.dicom.charset import choose_response_charset
from dicomvault.dicom.matching import ReturnKey
from dicomvault.index.search import SearchResult

LOGGER = logging.getLogger(__name__)

_TEXT_VRS = frozenset(
    [
        "AE",
        "AS",
        "CS",
        "DA",
        "DS",
        "DT",
        "IS",
        "LO",
        "LT",
        "PN",
        "SH",
        "ST",
        "TM",
        "UC",
        "UI",
        "UR",
        "UT",
    ]
)


def build_identifier(
    result: SearchResult,
    return_keys: Iterable[ReturnKey],
    level_name: str,
    retrieve_ae_title: str,
    requested_charset: list[str],
) -> Dataset:
    """Return the response Identifier for one match (PS3.4 C.4.1.1.3.2).

    Every requested return key is present, with the archive's value or
    empty. Query/Retrieve Level and Retrieve AE Title are always included,
    and Specific Character Set whenever a value needs it.
    """
    ds = Dataset()
    ds.QueryRetrieveLevel = level_name
    texts: list[str] = []
    for key in return_keys:
        element = _response_element(key, result, retrieve_ae_title)
        ds.add(element)
        texts.extend(_element_texts(element))
    if "RetrieveAETitle" not in ds:
        ds.RetrieveAETitle = retrieve_ae_title

    charset = choose_response_charset(requested_charset, texts)
    if charset:
        ds.SpecificCharacterSet = charset if len(charset) > 1 else charset[0]
    return ds


def _response_element(key: ReturnKey, result: SearchResult, ae_title: str) -> DataElement:
    if key.keyword == "RetrieveAETitle":
        return DataElement(key.tag, "AE", ae_title)
    if key.keyword == "InstanceAvailability":
        return DataElement(key.tag, "CS", "ONLINE")

    json_element = result.elements.get(key.tag)
    if json_element is not None:
        element = _element_from_json(key, json_element)
        if element is not None:
            return element

    values = result.record.get(key.keyword)
    if values and key.vr != "SQ":
        texts = [str(value) for value in values]
        return DataElement(key.tag, key.vr, texts[0] if len(texts) == 1 else texts)
    return DataElement(key.tag, key.vr, [] if key.vr == "SQ" else None)


def _element_from_json(key: ReturnKey, json_element: dict[str, Any]) -> DataElement | None:
    source = copy.deepcopy(json_element)
    if source.get("vr") == "SQ" and key.item_tags:
        wanted = {f"{tag:08X}" for tag in key.item_tags}
        source["Value"] = [
            {tag: value for tag, value in item.items() if tag in wanted}
            for item in source.get("Value") or []
        ]
    if "BulkDataURI" in source or "InlineBinary" in source:
        return None  # binary values are not returned by C-FIND
    try:
        ds = Dataset.from_json({f"{key.tag:08X}": source})
    except (ValueError, TypeError, KeyError) as exc:
        LOGGER.warning("Cannot return %s from the stored header: %s", key.keyword, exc)
        return None
    return ds[key.tag]


def _element_texts(element: DataElement) -> list[str]:
    if element.VR == "SQ":
        return [text for item in element.value for sub in item for text in _element_texts(sub)]
    if element.VR not in _TEXT_VRS or element.value is None:
        return []
    value = element.value
    items = value if isinstance(value, (list, MultiValue)) else [value]
    return [str(item) for item in items]
