"""WADO-RS: rendered images and thumbnails of instances and frames (PS3.18 10.4.1.1.6-7)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

from fastapi import APIRouter, HTTPException, Request, Response, status

from dicomvault.archive import Archive
from dicomvault.dicom.attributes import Level
from dicomvault.render import (
    JPEG,
    MAX_VIEWPORT,
    RENDERED_MEDIA_TYPES,
    WINDOW_FUNCTIONS,
    RenderError,
    RenderOptions,
    Window,
    read_frame,
    render_frame,
)
from dicomvault.web.dicomweb.media import MediaTypeError, parse_accept, single_acceptables
from dicomvault.web.dicomweb.resources import (
    ArchiveDependency,
    InstanceRef,
    find_instances,
    open_instance,
)

LOGGER = logging.getLogger(__name__)

router = APIRouter(tags=["WADO-RS rendered"])

THUMBNAIL_SIZE = (128, 128)
RENDER_PARAMETERS = frozenset({"window", "viewport", "quality"})


class RenderParameterError(ValueError):
    """A rendering query parameter is malformed; the message names it."""


def parse_render_options(
    params: Iterable[tuple[str, str]], media_type: str, default_viewport: tuple[int, int] | None
) -> RenderOptions:
    """Return the rendering options of the ``window``, ``viewport`` and ``quality`` parameters.

    ``window=center,width[,function]`` with function linear, linear-exact or
    sigmoid; ``viewport=width,height`` in pixels (a source rectangle after
    them is not supported); ``quality`` from 1 to 100 for JPEG.

    Raises
    ------
    RenderParameterError
        If a parameter is unknown or malformed.
    """
    options = RenderOptions(media_type=media_type, viewport=default_viewport)
    for name, value in params:
        if name == "window":
            options = dataclasses.replace(options, window=_parse_window(value))
        elif name == "viewport":
            options = dataclasses.replace(options, viewport=_parse_viewport(value))
        elif name == "quality":
            options = dataclasses.replace(options, quality=_parse_quality(value))
        elif name:
            raise RenderParameterError(
                f"Unknown rendering parameter '{name}'; supported: window, viewport, quality"
            )
    return options


def _parse_window(value: str) -> Window:
    parts = [part.strip() for part in value.split(",")]
    if len(parts) not in (2, 3):
        raise RenderParameterError(
            f"Invalid window '{value}': expected center,width or center,width,function"
        )
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise RenderParameterError(
            f"Invalid window '{value}': center and width must be numbers"
        ) from None
    function = parts[2].lower() if len(parts) == 3 else "linear"
    if function not in WINDOW_FUNCTIONS:
        raise RenderParameterError(
            f"Invalid window function '{parts[2]}': expected {', '.join(WINDOW_FUNCTIONS)}"
        )
    minimum = 1.0 if function == "linear" else 0.0
    if width < minimum or (function != "linear" and width == 0):
        raise RenderParameterError(
            f"Invalid window '{value}': the width must be at least 1 for linear and above "
            "0 for the other functions"
        )
    return Window(center, width, function)


def _parse_viewport(value: str) -> tuple[int, int]:
    parts = [part.strip() for part in value.split(",")]
    if len(parts) != 2:
        raise RenderParameterError(
            f"Invalid viewport '{value}': expected width,height; source rectangles are "
            "not supported"
        )
    try:
        width, height = int(parts[0]), int(parts[1])
    except ValueError:
        raise RenderParameterError(
            f"Invalid viewport '{value}': width and height must be integers"
        ) from None
    if not (1 <= width <= MAX_VIEWPORT and 1 <= height <= MAX_VIEWPORT):
        raise RenderParameterError(
            f"Invalid viewport '{value}': width and height must be from 1 to {MAX_VIEWPORT}"
        )
    return width, height


def _parse_quality(value: str) -> int:
    try:
        quality = int(value)
    except ValueError:
        quality = 0
    if not 1 <= quality <= 100:
        raise RenderParameterError(f"Invalid quality '{value}': expected an integer from 1 to 100")
    return quality


def _media_type(request: Request) -> str:
    try:
        ranges = parse_accept(request.headers.get("accept"))
    except MediaTypeError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    chosen = single_acceptables(ranges, RENDERED_MEDIA_TYPES)
    if not chosen:
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE,
            "Rendered images are available as image/jpeg or image/png",
        )
    return chosen[0]


def _render(
    request: Request,
    archive: Archive,
    ref: InstanceRef,
    frame_number: int,
    default_viewport: tuple[int, int] | None,
) -> Response:
    """Render one frame of ``ref`` (1-based ``frame_number``) as the accepted image type.

    Notes
    -----
    - 200: the image.
    - 400: a rendering parameter is malformed or unknown.
    - 404: the frame does not exist.
    - 406: no acceptable image type, or the instance cannot be rendered
      (no pixel data, unsupported photometric interpretation, no decoder).
    """
    media_type = _media_type(request)
    try:
        options = parse_render_options(
            request.query_params.multi_items(), media_type, default_viewport
        )
    except RenderParameterError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    return render_instance(archive, ref, frame_number, options)


def render_instance(
    archive: Archive, ref: InstanceRef, frame_number: int, options: RenderOptions
) -> Response:
    """Return one frame of ``ref`` (1-based ``frame_number``) rendered with ``options``.

    Raises
    ------
    HTTPException
        404 if the frame does not exist; 406 if the instance cannot be
        rendered (no pixel data, unsupported photometric interpretation,
        no decoder).
    """
    if not 1 <= frame_number <= ref.number_of_frames:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"Frame {frame_number} does not exist; the instance has {ref.number_of_frames} frames",
        )
    try:
        with open_instance(archive, ref) as stream:
            ds, pixels = read_frame(stream, frame_number - 1)
        image = render_frame(ds, pixels, options)
    except RenderError as exc:
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE,
            f"Instance {ref.sop_instance_uid} cannot be rendered: {exc}",
        ) from None
    return Response(image, media_type=options.media_type)


def _single_frame(frame_list: str) -> int:
    if not frame_list.isdigit():
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"Invalid frame '{frame_list}': rendering takes one frame number from 1, such as 1",
        )
    return int(frame_list)


def representative_instance(archive: Archive, refs: list[InstanceRef]) -> InstanceRef:
    """Return the instance a thumbnail shows: the middle image of the first series."""
    headers = archive.headers(Level.IMAGE, [ref.pk for ref in refs])
    images = [ref for ref in refs if "00280010" in headers.get(ref.pk, {})]
    if not images:
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE, "No instance of the request has pixel data to show"
        )
    first_series = [
        ref for ref in images if ref.series_instance_uid == images[0].series_instance_uid
    ]
    return first_series[len(first_series) // 2]


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/rendered",
    summary="Render an instance",
)
def rendered_instance(
    study: str, series: str, instance: str, request: Request, archive: ArchiveDependency
) -> Response:
    """Render the first frame of an instance as JPEG or PNG."""
    ref = find_instances(archive, study, series, instance)[0]
    return _render(request, archive, ref, 1, None)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered",
    summary="Render a frame",
)
def rendered_frame(
    study: str, series: str, instance: str, frame: str, request: Request, archive: ArchiveDependency
) -> Response:
    """Render one frame of an instance as JPEG or PNG."""
    number = _single_frame(frame)
    ref = find_instances(archive, study, series, instance)[0]
    return _render(request, archive, ref, number, None)


@router.get("/studies/{study}/thumbnail", summary="Thumbnail of a study")
def study_thumbnail(study: str, request: Request, archive: ArchiveDependency) -> Response:
    """Return a small image of the middle instance of the study's first series."""
    ref = representative_instance(archive, find_instances(archive, study))
    return _render(request, archive, ref, 1, THUMBNAIL_SIZE)


@router.get("/studies/{study}/series/{series}/thumbnail", summary="Thumbnail of a series")
def series_thumbnail(
    study: str, series: str, request: Request, archive: ArchiveDependency
) -> Response:
    """Return a small image of the middle instance of the series."""
    ref = representative_instance(archive, find_instances(archive, study, series))
    return _render(request, archive, ref, 1, THUMBNAIL_SIZE)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/thumbnail",
    summary="Thumbnail of an instance",
)
def instance_thumbnail(
    study: str, series: str, instance: str, request: Request, archive: ArchiveDependency
) -> Response:
    """Return a small image of the first frame of an instance."""
    ref = find_instances(archive, study, series, instance)[0]
    return _render(request, archive, ref, 1, THUMBNAIL_SIZE)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/thumbnail",
    summary="Thumbnail of a frame",
)
def frame_thumbnail(
    study: str, series: str, instance: str, frame: str, request: Request, archive: ArchiveDependency
) -> Response:
    """Return a small image of one frame of an instance."""
    number = _single_frame(frame)
    ref = find_instances(archive, study, series, instance)[0]
    return _render(request, archive, ref, number, THUMBNAIL_SIZE)


__all__ = [
    "JPEG",
    "parse_render_options",
    "render_instance",
    "representative_instance",
    "router",
]
