"""Split a DICOM file (PS3.10) into its File Meta Information and dataset."""

from __future__ import annotations

import dataclasses
import struct

from dicomvault.dicom.header import InvalidDatasetError

PREAMBLE_LENGTH = 128
PREFIX = b"DICM"
# VRs whose explicit VR encoding has two reserved bytes and a 32-bit length (PS3.5 7.1.2).
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR"}
_LONG_LENGTH_VRS |= {b"UT", b"UV"}
_TRANSFER_SYNTAX_UID = 0x0010
_MEDIA_STORAGE_SOP_CLASS_UID = 0x0002
_MEDIA_STORAGE_SOP_INSTANCE_UID = 0x0003


class NotDicomFileError(InvalidDatasetError):
    """The file is not a DICOM file: it has no preamble and 'DICM' prefix."""


@dataclasses.dataclass(frozen=True)
class Part10File:
    """The start of a DICOM file's dataset, and values of its File Meta Information."""

    transfer_syntax_uid: str
    media_storage_sop_class_uid: str
    dataset_offset: int
    media_storage_sop_instance_uid: str = ""


def split_part10(data: bytes | memoryview, bare_meta: bool = False) -> Part10File:
    """Read the File Meta Information of a whole DICOM file.

    The 128-byte preamble may be missing when the file starts with 'DICM',
    a form some writers produce. With ``bare_meta``, the file may also start
    with the group 0002 elements themselves, without preamble and 'DICM', as
    pydicom writes a dataset created in memory. The group 0002 elements are
    read in Explicit VR Little Endian, as PS3.10 7.1 requires.

    Raises
    ------
    NotDicomFileError
        If there is no 'DICM' prefix after the preamble or at the start.
    InvalidDatasetError
        If the File Meta Information is truncated or has no Transfer Syntax UID.
    """
    view = memoryview(data)
    if bytes(view[PREAMBLE_LENGTH : PREAMBLE_LENGTH + 4]) == PREFIX:
        offset = PREAMBLE_LENGTH + 4
    elif bytes(view[:4]) == PREFIX:
        offset = 4
    elif bare_meta and _starts_with_meta_element(view):
        offset = 0
    elif _starts_like_dataset(view):
        raise NotDicomFileError(
            "No File Meta Information (128-byte preamble, 'DICM' and group 0002), so the "
            "transfer syntax is unknown; convert it with DCMTK's 'dcmconv -f +F IN OUT' "
            "and index the result"
        )
    else:
        raise NotDicomFileError(
            "Not a DICOM file: no 'DICM' prefix after a 128-byte preamble (PS3.10 7.1)"
        )

    values: dict[int, str] = {}
    while offset + 8 <= len(view):
        group, element = struct.unpack_from("<HH", view, offset)
        if group != 0x0002:
            break
        vr = bytes(view[offset + 4 : offset + 6])
        if vr in _LONG_LENGTH_VRS:
            if offset + 12 > len(view):
                break
            (length,) = struct.unpack_from("<I", view, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", view, offset + 6)
            start = offset + 8
        if start + length > len(view):
            raise InvalidDatasetError(
                f"The File Meta Information is truncated: element (0002,{element:04X}) "
                f"declares {length} bytes but {len(view) - start} follow"
            )
        if element in (
            _TRANSFER_SYNTAX_UID,
            _MEDIA_STORAGE_SOP_CLASS_UID,
            _MEDIA_STORAGE_SOP_INSTANCE_UID,
        ):
            raw = bytes(view[start : start + length])
            values[element] = raw.decode("ascii", errors="replace").strip(" \x00")
        offset = start + length

    syntax = values.get(_TRANSFER_SYNTAX_UID, "")
    if not syntax:
        raise InvalidDatasetError(
            "The File Meta Information has no Transfer Syntax UID (0002,0010), so the "
            "dataset's encoding is unknown"
        )
    return Part10File(
        syntax,
        values.get(_MEDIA_STORAGE_SOP_CLASS_UID, ""),
        offset,
        values.get(_MEDIA_STORAGE_SOP_INSTANCE_UID, ""),
    )


def _starts_with_meta_element(view: memoryview) -> bool:
    """Return whether the bytes begin with a group 0002 element in explicit VR little endian."""
    if len(view) < 8:
        return False
    group = struct.unpack_from("<H", view, 0)[0]
    vr = bytes(view[4:6])
    return group == 0x0002 and vr.isalpha() and vr.isupper()


def _starts_like_dataset(view: memoryview) -> bool:
    """Return whether the bytes begin like a bare dataset: a group 0008 element first."""
    if len(view) < 8:
        return False
    little, big = struct.unpack_from("<H", view, 0)[0], struct.unpack_from(">H", view, 0)[0]
    return 0x0008 in (little, big)
