"""Decode stored pixel data and re-encode an instance in another transfer syntax.

C-MOVE and C-GET convert for peers that do not accept the stored transfer
syntax, and WADO-RS converts for the transfer syntax a client requests. Both
read the stored file, decode its pixel data with the first decoder that works,
and encode the dataset again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from dicomvault.dicom.header import encode_file_meta

LOGGER = logging.getLogger(__name__)

# Decoders in the order they are tried: pylibjpeg and pydicom's own RLE
# decoder first, python-gdcm where they fail.
DECODING_PLUGINS = ("pylibjpeg", "pydicom", "gdcm")
UNCOMPRESSED_TARGETS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# Lossless compressed syntaxes the archive encodes to when an encoder is installed.
COMPRESSED_TARGETS = (RLELossless, JPEG2000Lossless)


class ConversionError(ValueError):
    """A stored instance cannot be converted to the requested transfer syntax."""


def rewound(source: Path | BinaryIO) -> Path | BinaryIO:
    """Move ``source`` to its start if it is a stream, and return it; a path is returned as is.

    pydicom reads a stream from its current position, so a stream read
    before must be rewound to be read again.
    """
    if not isinstance(source, (str, os.PathLike)):
        source.seek(0)
    return source


def decompressed(source: Path | BinaryIO, ds: Dataset) -> Dataset:
    """Return the dataset read from ``source`` with its pixel data decoded.

    ``ds`` is the dataset already read from ``source``, a path or a seekable
    stream. Each plugin of DECODING_PLUGINS that supports the transfer
    syntax is tried in turn.

    Raises
    ------
    ConversionError
        If no installed decoder supports the syntax or every one fails.
    """
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        available = set(get_decoder(syntax).available_plugins)
    except NotImplementedError:  # pydicom has no decoder for the syntax at all
        available = set()
    errors = []
    for plugin in (name for name in DECODING_PLUGINS if name in available):
        try:
            # Keep the SOP Instance UID: pydicom would otherwise make a new one.
            ds.decompress(decoding_plugin=plugin, generate_instance_uid=False)
            return ds
        except Exception as exc:  # pixel data decoders raise many types
            errors.append(f"{plugin}: {exc}")
            ds = pydicom.dcmread(rewound(source))
    if not errors:
        raise ConversionError(f"no installed decoder supports {syntax.name}")
    raise ConversionError(f"decoding {syntax.name} failed ({'; '.join(errors)})")


def swap_pixel_data_bytes(ds: Dataset) -> None:
    """Reorder the bytes of native Pixel Data words from big to little endian.

    pydicom converts numeric values when it changes byte order but writes OB
    and OW values as they are, so 16- and 32-bit pixel words are swapped here.
    """
    # NOTE: other OW values (LUT data, overlays) keep big endian byte order.
    if "PixelData" not in ds or ds.get("BitsAllocated") not in (16, 32):
        return
    word = f">u{ds.BitsAllocated // 8}"
    ds.PixelData = np.frombuffer(ds.PixelData, dtype=word).astype(word.replace(">", "<")).tobytes()


def supported_targets() -> tuple[UID, ...]:
    """Return the transfer syntaxes :func:`encode_instance` can produce here.

    The uncompressed ones always; RLE Lossless and JPEG 2000 Lossless when
    pydicom finds an installed encoder for them.
    """
    targets = list(UNCOMPRESSED_TARGETS)
    for syntax in COMPRESSED_TARGETS:
        try:
            if get_encoder(syntax).is_available:
                targets.append(syntax)
        except NotImplementedError:
            continue
    return tuple(targets)


def encode_instance(source: Path | BinaryIO, target: str) -> bytes:
    """Return a stored file as a DICOM file in transfer syntax ``target``.

    ``source`` is the file's path, or a seekable stream of the file.

    The result has a new File Meta Information header with the archive's
    implementation identity. Compressed pixel data is decoded first, then
    encoded again when ``target`` is compressed.

    Raises
    ------
    ConversionError
        If ``target`` is not one of :func:`supported_targets`, or decoding or
        encoding the pixel data fails.
    """
    syntax = UID(target)
    if syntax not in supported_targets():
        raise ConversionError(f"the archive cannot encode {syntax.name or syntax}")
    ds: Dataset = pydicom.dcmread(rewound(source))
    stored = ds.file_meta.TransferSyntaxUID
    if stored.is_compressed and "PixelData" in ds:
        ds = decompressed(source, ds)
    for _ in ds.iterall():
        pass  # decodes every raw element, so none is copied in the old encoding
    if not stored.is_little_endian:
        swap_pixel_data_bytes(ds)

    if syntax.is_compressed:
        if "PixelData" not in ds:
            raise ConversionError(f"{syntax.name} needs pixel data, and the instance has none")
        try:
            ds.compress(syntax, generate_instance_uid=False)
        except Exception as exc:  # pixel data encoders raise many types
            raise ConversionError(f"encoding {syntax.name} failed: {exc}") from exc

    buffer = DicomBytesIO()
    buffer.is_implicit_VR = syntax.is_implicit_VR
    buffer.is_little_endian = True
    write_dataset(buffer, ds)
    meta = encode_file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax)
    return meta + buffer.getvalue()
