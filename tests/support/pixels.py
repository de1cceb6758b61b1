"""Bundled image files per transfer syntax, and reference pixels decoded as the archive does."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from tests.support.corpus import PYDICOM_TEST_FILES, BundledFile, bundled_files


def pick_corpus(syntaxes: Sequence[str]) -> list[BundledFile]:
    """Return the first bundled image file of each transfer syntax in ``syntaxes``."""
    picked: dict[str, BundledFile] = {}
    # Several bundled files share a SOP Instance UID; the archive keeps one.
    uids: set[str] = set()
    for bundled in bundled_files(PYDICOM_TEST_FILES):
        syntax = bundled.transfer_syntax_uid
        if syntax not in syntaxes or syntax in picked or bundled.sop_instance_uid in uids:
            continue
        if decodes(bundled.path):
            picked[syntax] = bundled
            uids.add(bundled.sop_instance_uid)
    return list(picked.values())


def decodes(path: Path) -> bool:
    """Return whether pydicom decodes the file's pixel data here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path)
            if "PixelData" not in ds:
                return False
            ds.pixel_array  # noqa: B018
        except Exception:
            return False
    return True


def pixels(path: Path) -> np.ndarray[Any, Any]:
    """Decode the pixel data the way the archive does: with pylibjpeg first.

    Lossy JPEG decoders may differ by one in a few pixels, so the reference
    must come from the decoder the archive tries first.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(decoding_plugin="pylibjpeg", generate_instance_uid=False)
        return ds.pixel_array
