"""DICOM files for the tests: pydicom's bundled files and small generated instances."""

from __future__ import annotations

import dataclasses
import struct
import warnings
from pathlib import Path

import pydicom
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    generate_uid,
)

# Files shipped inside the pydicom package. pydicom's get_testdata_files()
# also downloads the files listed in its urls.json that are not cached yet,
# so the tests list these folders themselves and never trigger a download.
PYDICOM_TEST_FILES = Path(DATA_ROOT) / "test_files"
PYDICOM_CHARSET_FILES = Path(DATA_ROOT) / "charset_files"

# Prefix of every UID the tests generate (pydicom's own UID root).
TEST_UID_PREFIX = "1.2.826.0.1.3680043.8.498."

_DICM_OFFSET = 128
_INDEX_DATABASE_NAMES = (
    "index.sqlite",
    "index.sqlite-wal",
    "index.sqlite-shm",
    "index.sqlite-journal",
    "dicomvault.lock",
)


@dataclasses.dataclass(frozen=True)
class BundledFile:
    """A pydicom data file with the UIDs an archive needs to index it."""

    path: Path
    name: str
    transfer_syntax_uid: UID
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str


def bundled_files(folder: Path) -> list[BundledFile]:
    """List the storable DICOM files under `folder`, sorted by path.

    Names are relative to the parent of `folder`, such as
    "test_files/CT_small.dcm". A file counts if pydicom reads it, it is not a DICOMDIR, and it has
    non-empty SOP Class, SOP Instance, Study Instance and Series Instance UIDs
    and a Transfer Syntax UID in its File Meta Information.
    """
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = _read_quietly(path)
        if ds is None:
            continue
        meta = ds.file_meta
        if meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage:
            continue
        uids = [
            ds.get(keyword)
            for keyword in (
                "SOPClassUID",
                "SOPInstanceUID",
                "StudyInstanceUID",
                "SeriesInstanceUID",
            )
        ]
        transfer_syntax = meta.get("TransferSyntaxUID")
        if not all(uids) or not transfer_syntax:
            continue
        files.append(
            BundledFile(
                path=path,
                name=path.relative_to(folder.parent).as_posix(),
                transfer_syntax_uid=UID(transfer_syntax),
                sop_class_uid=str(uids[0]),
                sop_instance_uid=str(uids[1]),
                study_instance_uid=str(uids[2]),
                series_instance_uid=str(uids[3]),
            )
        )
    return files


def _read_quietly(path: Path) -> Dataset | None:
    # Several bundled files are non-conformant on purpose and pydicom warns
    # while reading them, and the tests turn warnings into errors.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, ValueError, KeyError, OSError):
            return None


def make_uid(*entropy: str) -> str:
    """Return a UID under TEST_UID_PREFIX, the same for the same `entropy` strings."""
    return str(generate_uid(prefix=TEST_UID_PREFIX, entropy_srcs=list(entropy)))


def write_instance(
    path: Path, ds: Dataset, transfer_syntax_uid: UID = ExplicitVRLittleEndian
) -> Path:
    """Write `ds` as a DICOM file with File Meta Information built from its UIDs."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def dataset_offset(data: bytes) -> int:
    """Return the offset of the dataset that follows the File Meta Information.

    `data` is a whole DICOM file: a 128-byte preamble, "DICM", then group 0002
    elements in Explicit VR Little Endian (PS3.10 7.1).
    """
    if data[_DICM_OFFSET : _DICM_OFFSET + 4] != b"DICM":
        raise ValueError("not a DICOM file: no 'DICM' prefix after the 128-byte preamble")
    offset = _DICM_OFFSET + 4
    while offset + 8 <= len(data):
        group, _element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        vr = data[offset + 4 : offset + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            (length,) = struct.unpack_from("<I", data, offset + 8)
            offset += 12 + length
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            offset += 8 + length
    return offset


def stored_files(data_dir: Path) -> list[Path]:
    """List the instance files the archive keeps under DATA_DIR/storage."""
    return sorted(p for p in (data_dir / "storage").rglob("*.dcm") if p.is_file())


def stored_file_for(data_dir: Path, sop_instance_uid: str) -> list[Path]:
    """Return the stored files whose dataset has `sop_instance_uid`."""
    matches = []
    for path in stored_files(data_dir):
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        if ds.get("SOPInstanceUID") == sop_instance_uid:
            matches.append(path)
    return matches


def leftover_files(data_dir: Path) -> list[str]:
    """List files under `data_dir` relative to it, but the SQLite index, the lock and journals.

    The write journal of a running server stays while it runs (see
    dicomvault.storage.journal).
    """
    if not data_dir.exists():
        return []
    journals = data_dir / "journal"
    return sorted(
        p.relative_to(data_dir).as_posix()
        for p in data_dir.rglob("*")
        if p.is_file()
        and not (p.parent == data_dir and p.name in _INDEX_DATABASE_NAMES)
        and p.parent != journals
    )
