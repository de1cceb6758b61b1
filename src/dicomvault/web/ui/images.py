"""Rendered images for the console: thumbnails and viewer frames, for logged-in users only.

The console loads images from these routes and not from DICOMweb, so the
viewer keeps working with the session cookie when DICOMweb requires other
credentials. Rendering is the code of the WADO-RS /rendered resources.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status

from dicomvault.archive import Archive
from dicomvault.index.users import Session
from dicomvault.render import JPEG, PNG, RenderOptions
from dicomvault.web.dicomweb.rendered import (
    THUMBNAIL_SIZE,
    RenderParameterError,
    parse_render_options,
    render_instance,
    representative_instance,
)
from dicomvault.web.dicomweb.resources import find_instances
from dicomvault.web.identity import current_session
from dicomvault.web.ui.rendering import CONSOLE_PREFIX

LOGGER = logging.getLogger(__name__)

router = APIRouter(prefix=f"{CONSOLE_PREFIX}/images", include_in_schema=False)

# Rendered images do not change for the same URL, so the browser may keep them a while.
IMAGE_CACHE_CONTROL = "private, max-age=3600"
VIEWER_JPEG_QUALITY = 90


def image_session(request: Request) -> Session:
    """Return the live console session (a FastAPI dependency); 401 without one.

    Images get 401 instead of a redirect to the login page, because an
    ``<img>`` cannot show a page.
    """
    session = current_session(request)
    if session is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Log in to the console to view images")
    return session


ImageSession = Annotated[Session, Depends(image_session)]


def _cached(response: Response) -> Response:
    response.headers["Cache-Control"] = IMAGE_CACHE_CONTROL
    return response


@router.get("/studies/{study}/series/{series}/thumbnail")
def series_thumbnail(study: str, series: str, request: Request, _: ImageSession) -> Response:
    """Return a JPEG thumbnail of the middle image of a series."""
    archive: Archive = request.app.state.archive
    ref = representative_instance(archive, find_instances(archive, study, series))
    options = RenderOptions(media_type=JPEG, viewport=THUMBNAIL_SIZE)
    return _cached(render_instance(archive, ref, 1, options))


@router.get("/studies/{study}/series/{series}/instances/{instance}/thumbnail")
def instance_thumbnail(
    study: str, series: str, instance: str, request: Request, _: ImageSession
) -> Response:
    """Return a JPEG thumbnail of the first frame of an instance."""
    archive: Archive = request.app.state.archive
    ref = find_instances(archive, study, series, instance)[0]
    options = RenderOptions(media_type=JPEG, viewport=THUMBNAIL_SIZE)
    return _cached(render_instance(archive, ref, 1, options))


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frame}")
def frame_image(
    study: str,
    series: str,
    instance: str,
    frame: int,
    request: Request,
    _: ImageSession,
    window: str = "",
    format: str = "jpeg",
) -> Response:
    """Return one frame (from 1) rendered for the viewer, as JPEG or, with format=png, PNG.

    ``window`` is ``center,width`` as in WADO-RS; empty uses the stored
    window or the range of the values.

    Notes
    -----
    - 400: the window is malformed, or the format is neither jpeg nor png.
    - 404: the instance or the frame does not exist.
    - 406: the instance cannot be rendered.
    """
    if format not in {"jpeg", "png"}:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"Invalid format {format!r}: use jpeg or png"
        )
    params = [("window", window)] if window else []
    if format == "jpeg":
        params.append(("quality", str(VIEWER_JPEG_QUALITY)))
    try:
        options = parse_render_options(params, JPEG if format == "jpeg" else PNG, None)
    except RenderParameterError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    archive: Archive = request.app.state.archive
    ref = find_instances(archive, study, series, instance)[0]
    return _cached(render_instance(archive, ref, frame, options))
