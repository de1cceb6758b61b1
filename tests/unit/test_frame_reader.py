"""Unit tests for reading selected frames from a stored file, in S3 storage on moto."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi import HTTPException
from pydicom.encaps import get_frame
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomvault.storage.s3 import S3Storage
from dicomvault.storage.s3_reader import READ_BLOCK_MIN
from dicomvault.web.dicomweb.frame_reader import read_frames
from tests.support.corpus import PYDICOM_TEST_FILES, write_instance
from tests.support.datasets import make_instance
from tests.support.moto import MotoServer, RangeRecorder, s3_settings

ROWS = COLUMNS = 512
FRAMES = 16
FRAME_BYTES = ROWS * COLUMNS * 2


@pytest.fixture
def storage(moto_server: MotoServer, tmp_path: Path) -> S3Storage:
    return S3Storage(s3_settings(moto_server, moto_server.new_bucket(), tmp_path).storage)


def multi_frame_file(path: Path, syntax: pydicom.uid.UID) -> tuple[bytes, np.ndarray]:
    """Write a 16-frame 16-bit native instance; return its bytes and its pixels."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 4096, size=(FRAMES, ROWS, COLUMNS), dtype=np.uint16)
    ds = make_instance(
        Rows=ROWS,
        Columns=COLUMNS,
        NumberOfFrames=FRAMES,
        SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2",
        BitsAllocated=16,
        BitsStored=12,
        HighBit=11,
        PixelRepresentation=0,
    )
    ds.PixelData = pixels.astype(">u2" if syntax == ExplicitVRBigEndian else "<u2").tobytes()
    write_instance(path, ds, syntax)
    return path.read_bytes(), pixels


@pytest.mark.parametrize(
    "syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian],
    ids=["explicit-little", "implicit-little", "explicit-big"],
)
def test_native_frame_read_by_range(storage: S3Storage, tmp_path: Path, syntax: str) -> None:
    data, pixels = multi_frame_file(tmp_path / "multi.dcm", pydicom.uid.UID(syntax))
    storage.put("mf/01/multi.dcm", [data])
    counter = RangeRecorder(storage)

    with storage.open("mf/01/multi.dcm") as stream:
        decoded = read_frames(stream, [12, 3], False, "1.2.3")
    with storage.open("mf/01/multi.dcm") as stream:
        stored = read_frames(stream, [12], True, "1.2.3")

    assert decoded == [pixels[11].astype("<u2").tobytes(), pixels[2].astype("<u2").tobytes()]
    byte_order = ">u2" if syntax == ExplicitVRBigEndian else "<u2"
    assert stored == [pixels[11].astype(byte_order).tobytes()]
    assert len(data) > 8 * 1024 * 1024
    # The header block of each opening, and one block per frame read.
    assert counter.bytes_requested <= 5 * READ_BLOCK_MIN


def test_encapsulated_frames_as_stored(storage: S3Storage) -> None:
    path = PYDICOM_TEST_FILES / "SC_rgb_rle_2frame.dcm"
    storage.put("rl/01/rle.dcm", [path.read_bytes()])
    reference = pydicom.dcmread(path)

    with storage.open("rl/01/rle.dcm") as stream:
        frames = read_frames(stream, [2, 1], True, "1.2.3")

    assert frames == [
        get_frame(reference.PixelData, 1, number_of_frames=2),
        get_frame(reference.PixelData, 0, number_of_frames=2),
    ]


def test_deflated_file_read_whole() -> None:
    path = PYDICOM_TEST_FILES / "image_dfl.dcm"
    reference = pydicom.dcmread(path)

    with path.open("rb") as stream:
        (frame,) = read_frames(stream, [1], True, "1.2.3")

    assert frame == reference.PixelData


def test_no_pixel_data(tmp_path: Path) -> None:
    path = write_instance(tmp_path / "no-pixels.dcm", make_instance())

    with path.open("rb") as stream, pytest.raises(HTTPException) as excinfo:
        read_frames(stream, [1], True, "1.2.3")

    assert excinfo.value.status_code == 404
    assert excinfo.value.detail == "Instance 1.2.3 has no pixel data"


def test_stream_may_start_anywhere() -> None:
    path = PYDICOM_TEST_FILES / "MR_small.dcm"
    reference = pydicom.dcmread(path)

    with path.open("rb") as stream:
        stream.seek(1000)
        (frame,) = read_frames(stream, [1], True, "1.2.3")

    assert frame == reference.PixelData
