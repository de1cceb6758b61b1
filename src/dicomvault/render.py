"""Render a frame of pixel data as a PNG or JPEG image for viewers and previews.

Grayscale frames go through the Modality LUT (rescale slope and intercept)
and a VOI window (PS3.3 C.11.2.1.2), then to 8 bits; MONOCHROME1 is inverted.
Color frames are converted to RGB and scaled to 8 bits.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut
from pydicom.pixels.utils import pixel_array

from dicomvault.transcode import DECODING_PLUGINS, rewound

LOGGER = logging.getLogger(__name__)

JPEG = "image/jpeg"
PNG = "image/png"
RENDERED_MEDIA_TYPES = (JPEG, PNG)
WINDOW_FUNCTIONS = ("linear", "linear-exact", "sigmoid")
DEFAULT_JPEG_QUALITY = 90
MAX_VIEWPORT = 8192


class RenderError(ValueError):
    """A frame cannot be rendered; the message states the reason."""


@dataclasses.dataclass(frozen=True)
class Window:
    """A VOI window: center and width in modality units, and the VOI LUT function."""

    center: float
    width: float
    function: str = "linear"


@dataclasses.dataclass(frozen=True)
class RenderOptions:
    """How to render: media type, window, viewport size and JPEG quality.

    ``window`` None uses the instance's first Window Center and Width, or the
    frame's value range without them. ``viewport`` (width, height) scales the
    image to fit inside it, keeping the aspect ratio.
    """

    media_type: str = JPEG
    window: Window | None = None
    viewport: tuple[int, int] | None = None
    quality: int = DEFAULT_JPEG_QUALITY


def read_frame(source: Path | BinaryIO, index: int) -> tuple[Dataset, np.ndarray[Any, Any]]:
    """Decode frame ``index`` (0-based) of a DICOM file; return its header and pixels.

    ``source`` is the file's path, or a seekable stream of the file, read
    from its start.

    Raises
    ------
    RenderError
        If the file has no pixel data, the frame does not exist, or no
        installed decoder can decode it.
    """
    ds = dcmread(rewound(source), stop_before_pixels=True)
    if "Rows" not in ds or "Columns" not in ds:
        raise RenderError("the instance has no pixel data to render")
    frames = int(ds.get("NumberOfFrames") or 1)
    if not 0 <= index < frames:
        raise RenderError(f"frame {index + 1} does not exist; the instance has {frames} frames")

    syntax = ds.file_meta.TransferSyntaxUID
    plugins = [""]
    if syntax.is_compressed:
        try:
            available = set(get_decoder(syntax).available_plugins)
        except NotImplementedError:
            raise RenderError(f"no decoder supports {syntax.name}") from None
        plugins = [name for name in DECODING_PLUGINS if name in available] or [""]
    errors = []
    for plugin in plugins:
        try:
            return ds, pixel_array(source, index=index, decoding_plugin=plugin)
        except Exception as exc:  # pixel data decoders raise many types
            errors.append(f"{plugin or 'pydicom'}: {exc}")
    raise RenderError(f"decoding the frame failed ({'; '.join(errors)})")


def render_frame(ds: Dataset, pixels: np.ndarray[Any, Any], options: RenderOptions) -> bytes:
    """Return one decoded frame encoded as ``options.media_type``.

    Raises
    ------
    RenderError
        If the media type is not PNG or JPEG, or the photometric
        interpretation is not supported.
    """
    if options.media_type not in RENDERED_MEDIA_TYPES:
        raise RenderError(f"cannot render as {options.media_type}; use image/jpeg or image/png")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        image_array = _to_uint8(rgb, 16 if rgb.dtype.itemsize > 1 else 8)
    elif pixels.ndim == 3:
        image_array = _to_uint8(pixels, int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8))
    elif photometric in {"MONOCHROME1", "MONOCHROME2"}:
        values = apply_modality_lut(pixels, ds).astype(np.float64)
        window = options.window or _stored_window(ds) or _range_window(values)
        image_array = apply_window(values, window)
        if photometric == "MONOCHROME1":
            image_array = 255 - image_array
    else:
        raise RenderError(f"photometric interpretation {photometric} is not supported")

    image = Image.fromarray(image_array)
    if options.viewport is not None:
        image = _fit(image, options.viewport)
    output = io.BytesIO()
    if options.media_type == JPEG:
        image.convert("RGB" if image.mode not in {"L", "RGB"} else image.mode).save(
            output, format="JPEG", quality=options.quality
        )
    else:
        image.save(output, format="PNG")
    return output.getvalue()


def default_window(ds: Dataset, pixels: np.ndarray[Any, Any]) -> Window | None:
    """Return the window a monochrome frame is rendered with when the request gives none.

    That is the instance's first stored window, or else the range of the
    frame's values after the modality LUT. Color frames have no window, so
    the result is None for them.
    """
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if pixels.ndim == 3 or photometric not in {"MONOCHROME1", "MONOCHROME2"}:
        return None
    return _stored_window(ds) or _range_window(apply_modality_lut(pixels, ds).astype(np.float64))


def apply_window(values: np.ndarray[Any, Any], window: Window) -> np.ndarray[Any, Any]:
    """Map values through a VOI window to 0-255 (PS3.3 C.11.2.1.2 and C.11.2.1.3.2)."""
    center, width = window.center, window.width
    if window.function == "sigmoid":
        output = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif window.function == "linear-exact":
        output = ((values - center) / width + 0.5) * 255.0
    else:
        # Linear: width 1 is a threshold at the center.
        span = max(width - 1.0, 1e-9)
        output = ((values - (center - 0.5)) / span + 0.5) * 255.0
    return np.clip(np.rint(output), 0, 255).astype(np.uint8)


def _stored_window(ds: Dataset) -> Window | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        first_center = float(center[0] if _is_sequence(center) else center)
        first_width = float(width[0] if _is_sequence(width) else width)
    except (TypeError, ValueError, IndexError):
        return None
    if first_width <= 0:
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper()
    names = {"LINEAR": "linear", "LINEAR_EXACT": "linear-exact", "SIGMOID": "sigmoid"}
    return Window(first_center, first_width, names.get(function, "linear"))


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def _range_window(values: np.ndarray[Any, Any]) -> Window:
    low, high = float(values.min()), float(values.max())
    width = max(high - low, 1.0)
    return Window((low + high) / 2.0, width, "linear-exact")


def _to_uint8(pixels: np.ndarray[Any, Any], bits: int) -> np.ndarray[Any, Any]:
    if pixels.dtype == np.uint8 and bits <= 8:
        return pixels
    shift = max(bits - 8, 0)
    scaled = np.right_shift(pixels.astype(np.uint32), shift)
    result: np.ndarray[Any, Any] = np.clip(scaled, 0, 255).astype(np.uint8)
    return result


def _fit(image: Image.Image, viewport: tuple[int, int]) -> Image.Image:
    width, height = viewport
    scale = min(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)
