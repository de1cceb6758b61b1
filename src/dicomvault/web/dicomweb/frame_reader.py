"""Read selected frames of a stored instance from a seekable stream.

Only the header, the Basic Offset Table and fragment headers of encapsulated
pixel data, and the requested frames are read, so a frame of a large
multi-frame instance in S3 storage costs a few ranged reads, not the object.
A deflated dataset is the exception: it has no byte offsets in the file and
is read whole.
"""

from __future__ import annotations

import io
import struct
from typing import BinaryIO

import numpy as np
import pydicom
from fastapi import HTTPException, status
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.uid import UID

from dicomvault.render import RenderError, read_frame
from dicomvault.transcode import rewound

PIXEL_DATA_GROUP, PIXEL_DATA_ELEMENT = 0x7FE0, 0x0010
# Explicit VRs whose element header has 2 reserved bytes and a 4-byte length (PS3.5 7.1.2).
LONG_HEADER_VRS = frozenset({b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"})


def read_frames(
    stream: BinaryIO, numbers: list[int], as_stored: bool, sop_instance_uid: str
) -> list[bytes]:
    """Return the bytes of frames ``numbers`` (1-based) of the stored file in ``stream``.

    With ``as_stored`` the frames are returned as stored: compressed
    bitstreams, or native bytes in the stored byte order. Otherwise they are
    decoded to native little endian bytes.

    Raises
    ------
    HTTPException
        404 if the instance has no pixel data; 406 if the frames must be
        decoded and cannot be.
    """
    ds = pydicom.dcmread(rewound(stream), stop_before_pixels=True)
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_deflated:
        full = pydicom.dcmread(rewound(stream))
        if "PixelData" not in full:
            raise _no_pixel_data(sop_instance_uid)
        value: BinaryIO = io.BytesIO(full.PixelData)
        offset, length = 0, len(full.PixelData)
    else:
        location = _pixel_data_value(stream, syntax)
        if location is None:
            raise _no_pixel_data(sop_instance_uid)
        value = stream
        offset, length = location

    frames = int(ds.get("NumberOfFrames") or 1)
    if syntax.is_compressed:
        if not as_stored:
            return [_decoded_frame(stream, n - 1) for n in numbers]
        selected = []
        for n in numbers:
            value.seek(offset)
            selected.append(get_frame(value, n - 1, number_of_frames=frames))
        return selected

    size = _native_frame_size(ds)
    selected = []
    for n in numbers:
        start = (n - 1) * size
        value.seek(offset + start)
        selected.append(value.read(max(0, min(size, length - start))))
    if not as_stored and not syntax.is_little_endian:
        selected = [_swap_words(frame, int(ds.BitsAllocated)) for frame in selected]
    return selected


def _pixel_data_value(stream: BinaryIO, syntax: UID) -> tuple[int, int] | None:
    """Return the offset and length of the Pixel Data value that starts at the stream's position.

    The position is where ``dcmread(stop_before_pixels=True)`` stopped. The
    length of encapsulated pixel data is undefined (0xFFFFFFFF). Returns None
    if no Pixel Data element starts there.
    """
    start = stream.tell()
    header = stream.read(12)
    order = "<" if syntax.is_little_endian else ">"
    if len(header) < 8:
        return None
    group, element = struct.unpack(f"{order}HH", header[:4])
    if (group, element) != (PIXEL_DATA_GROUP, PIXEL_DATA_ELEMENT):
        return None
    if syntax.is_implicit_VR:
        (length,) = struct.unpack(f"{order}I", header[4:8])
        return start + 8, length
    if header[4:6] in LONG_HEADER_VRS and len(header) == 12:
        (length,) = struct.unpack(f"{order}I", header[8:12])
        return start + 12, length
    (length,) = struct.unpack(f"{order}H", header[6:8])
    return start + 8, length


def _no_pixel_data(sop_instance_uid: str) -> HTTPException:
    return HTTPException(
        status.HTTP_404_NOT_FOUND, f"Instance {sop_instance_uid} has no pixel data"
    )


def _native_frame_size(ds: Dataset) -> int:
    bits = int(ds.BitsAllocated)
    pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1)
    if bits == 1:
        if pixels % 8:
            raise HTTPException(
                status.HTTP_406_NOT_ACCEPTABLE,
                "Frames of 1-bit pixel data that do not end on a byte boundary are not "
                "supported; retrieve the whole instance instead",
            )
        return pixels // 8
    return pixels * (bits // 8)


def _swap_words(frame: bytes, bits: int) -> bytes:
    if bits not in (16, 32):
        return frame
    word = f">u{bits // 8}"
    return np.frombuffer(frame, dtype=word).astype(word.replace(">", "<")).tobytes()


def _decoded_frame(source: BinaryIO, index: int) -> bytes:
    try:
        _, pixels = read_frame(source, index)
    except RenderError as exc:
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE,
            f"Frame {index + 1} cannot be decoded ({exc}); request it as stored with "
            "transfer-syntax=*",
        ) from None
    little = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False)
    return bytes(little.tobytes())
