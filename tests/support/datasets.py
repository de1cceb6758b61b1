"""Generated instances and C-FIND identifiers for the unit tests.

Instances are encoded without File Meta Information, the form in which a
C-STORE request delivers them to the archive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from tests.support.corpus import TEST_UID_PREFIX, dataset_offset


def new_uid() -> str:
    """Return a new random UID under the tests' UID prefix."""
    return str(generate_uid(prefix=TEST_UID_PREFIX))


def make_instance(**attributes: Any) -> Dataset:
    """Build a small MR instance with new UIDs; keyword arguments set or replace attributes.

    An attribute given the value None is left out, so ``PatientID=None``
    builds an instance without Patient ID.
    """
    values: dict[str, Any] = {
        "SOPClassUID": MRImageStorage,
        "SOPInstanceUID": new_uid(),
        "StudyInstanceUID": new_uid(),
        "SeriesInstanceUID": new_uid(),
        "PatientID": "PAT-1",
        "PatientName": "Doe^John",
        "StudyDate": "20240115",
        "StudyTime": "101500",
        "Modality": "MR",
        "SeriesNumber": "1",
        "InstanceNumber": "1",
    }
    values.update(attributes)
    ds = Dataset()
    for keyword, value in values.items():
        if value is not None:
            setattr(ds, keyword, value)
    return ds


def add_raw_element(ds: Dataset, keyword: str, value: Any) -> None:
    """Add an element without value validation, for values real devices send.

    Such values (a date in the ACR-NEMA form YYYY.MM.DD, for example) are
    invalid for their VR and pydicom would otherwise warn about them.
    """
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    ds.add(DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE))


def encode_dataset(ds: Dataset, transfer_syntax_uid: str = ExplicitVRLittleEndian) -> bytes:
    """Encode ``ds`` without File Meta Information in a native transfer syntax."""
    syntax = UID(transfer_syntax_uid)
    buffer = DicomBytesIO()
    buffer.is_little_endian = syntax.is_little_endian
    buffer.is_implicit_VR = syntax.is_implicit_VR
    write_dataset(buffer, ds)
    return buffer.getvalue()


def file_dataset(path: Path) -> bytes:
    """Return the encoded dataset of a DICOM file: its bytes after the File Meta Information."""
    data = path.read_bytes()
    return data[dataset_offset(data) :]


def make_identifier(level: str, **keys: Any) -> Dataset:
    """Build a C-FIND identifier at ``level``; keys are added without value validation.

    Matching keys may hold values invalid for their VR, such as a date range
    in a DA key or a wildcard in a CS key.
    """
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        add_raw_element(identifier, keyword, value)
    return identifier
