"""Tests of rendering frames to PNG and JPEG."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from dicomvault.render import (
    JPEG,
    PNG,
    RenderError,
    RenderOptions,
    Window,
    apply_window,
    read_frame,
    render_frame,
)
from tests.support.corpus import PYDICOM_TEST_FILES


def grayscale(photometric: str = "MONOCHROME2") -> Dataset:
    ds = Dataset()
    ds.PhotometricInterpretation = photometric
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1000
    return ds


class TestWindow:
    def test_linear_bounds(self) -> None:
        values = np.array([-1000.0, 40.0, 1000.0])
        assert apply_window(values, Window(40, 400)).tolist() == [0, 128, 255]

    def test_linear_exact_center(self) -> None:
        values = np.array([0.0, 50.0, 100.0])
        assert apply_window(values, Window(50, 100, "linear-exact")).tolist() == [0, 128, 255]

    def test_sigmoid_center_is_middle(self) -> None:
        assert apply_window(np.array([10.0]), Window(10, 20, "sigmoid")).tolist() == [128]


class TestRenderFrame:
    def test_png_size_and_monochrome1_inverted(self) -> None:
        pixels = np.array([[0, 2000], [1000, 1040]], dtype=np.uint16)
        window = Window(40, 400)
        plain = render_frame(grayscale(), pixels, RenderOptions(PNG, window))
        inverted = render_frame(grayscale("MONOCHROME1"), pixels, RenderOptions(PNG, window))
        plain_array = np.asarray(Image.open(io.BytesIO(plain)))
        inverted_array = np.asarray(Image.open(io.BytesIO(inverted)))
        assert plain_array.shape == (2, 2)
        assert plain_array.tolist() == [[0, 255], [102, 128]]
        assert (inverted_array == 255 - plain_array).all()

    def test_viewport_keeps_aspect_ratio(self) -> None:
        pixels = np.zeros((20, 40), dtype=np.uint16)
        data = render_frame(grayscale(), pixels, RenderOptions(JPEG, viewport=(10, 10)))
        assert Image.open(io.BytesIO(data)).size == (10, 5)

    def test_color_frame(self) -> None:
        ds = Dataset()
        ds.PhotometricInterpretation = "RGB"
        ds.BitsStored = 8
        pixels = np.full((3, 3, 3), 200, dtype=np.uint8)
        image = Image.open(io.BytesIO(render_frame(ds, pixels, RenderOptions(PNG))))
        assert image.mode == "RGB"

    def test_unsupported_media_type(self) -> None:
        with pytest.raises(RenderError, match="cannot render as image/gif"):
            render_frame(grayscale(), np.zeros((2, 2)), RenderOptions("image/gif"))


class TestReadFrame:
    def test_compressed_file(self) -> None:
        ds, pixels = read_frame(PYDICOM_TEST_FILES / "MR_small_jp2klossless.dcm", 0)
        assert pixels.shape == (ds.Rows, ds.Columns)

    def test_missing_frame(self) -> None:
        with pytest.raises(RenderError, match="frame 2 does not exist; the instance has 1 frames"):
            read_frame(PYDICOM_TEST_FILES / "CT_small.dcm", 1)

    def test_no_pixel_data(self) -> None:
        with pytest.raises(RenderError, match="no pixel data"):
            read_frame(PYDICOM_TEST_FILES / "rtplan.dcm", 0)
