"""WADO-URI: retrieve one instance by query parameters (PS3.18 9, requestType=WADO)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import StreamingResponse
from pydicom.uid import ExplicitVRLittleEndian

from dicomvault.audit import AuditAction, AuditEventType
from dicomvault.render import (
    JPEG,
    MAX_VIEWPORT,
    PNG,
    RenderError,
    RenderOptions,
    Window,
    read_frame,
    render_frame,
)
from dicomvault.transcode import ConversionError, encode_instance, supported_targets
from dicomvault.web.audit_events import publish_audit
from dicomvault.web.auth import request_principal
from dicomvault.web.dicomweb.media import DICOM, describe_syntax, is_uid
from dicomvault.web.dicomweb.resources import (
    ArchiveDependency,
    InstanceRef,
    find_instances,
    open_instance,
    read_chunks,
)
from dicomvault.web.dicomweb.retrieve import can_decode

LOGGER = logging.getLogger(__name__)

router = APIRouter(tags=["WADO-URI"])

SUPPORTED_PARAMETERS = frozenset(
    {
        "requestType",
        "studyUID",
        "seriesUID",
        "objectUID",
        "contentType",
        "transferSyntax",
        "frameNumber",
        "windowCenter",
        "windowWidth",
        "rows",
        "columns",
        "imageQuality",
        "charset",
    }
)
CONTENT_TYPES = (JPEG, PNG, DICOM)


def _required(request: Request, name: str) -> str:
    value = request.query_params.get(name, "").strip()
    if not value:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"The WADO-URI parameter '{name}' is missing"
        )
    return value


def _number(request: Request, name: str, low: float, high: float) -> float | None:
    text = request.query_params.get(name)
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"Invalid WADO-URI parameter {name}='{text}': expected a number from "
            f"{low:g} to {high:g}",
        )
    return value


def _content_type(request: Request) -> str:
    text = request.query_params.get("contentType", JPEG)
    for item in text.split(","):
        media_type = item.split(";")[0].strip().lower()
        if media_type in CONTENT_TYPES:
            return media_type
        if media_type in {"*/*", "image/*"}:
            return JPEG
    raise HTTPException(
        status.HTTP_406_NOT_ACCEPTABLE,
        f"Unsupported contentType '{text}': use image/jpeg, image/png or application/dicom",
    )


def _audit_retrieve(request: Request, ref: InstanceRef) -> None:
    publish_audit(
        request,
        AuditEventType.INSTANCES_TRANSFERRED,
        AuditAction.READ,
        request_principal(request).name,
        f"WADO-URI retrieve of instance {ref.sop_instance_uid}",
        study_uids=(ref.study_instance_uid,),
        detail={"operation": "WADO-URI"},
    )


@router.get("/wado", summary="WADO-URI retrieve")
def wado_uri(request: Request, archive: ArchiveDependency) -> Response:
    """Return one instance as a DICOM file or a rendered image.

    Notes
    -----
    - 200: the DICOM file (``contentType=application/dicom``, in
      ``transferSyntax``, Explicit VR Little Endian by default) or a JPEG or
      PNG image of ``frameNumber`` (default 1) with the optional window and size.
    - 400: requestType is not WADO, a UID is missing or malformed, or a
      parameter is unknown or malformed.
    - 404: the instance is not stored.
    - 406: the content type or transfer syntax cannot be produced.
    """
    unknown = sorted(set(request.query_params) - SUPPORTED_PARAMETERS)
    if unknown:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"Unsupported WADO-URI parameter '{unknown[0]}'; supported: "
            f"{', '.join(sorted(SUPPORTED_PARAMETERS))}",
        )
    if request.query_params.get("requestType") != "WADO":
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"requestType must be WADO, got '{request.query_params.get('requestType', '')}'",
        )
    study = _required(request, "studyUID")
    series = _required(request, "seriesUID")
    instance = _required(request, "objectUID")
    media_type = _content_type(request)
    ref = find_instances(archive, study, series, instance)[0]

    if media_type == DICOM:
        syntax = request.query_params.get("transferSyntax", str(ExplicitVRLittleEndian)).strip()
        if not is_uid(syntax):
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST, f"Invalid transferSyntax '{syntax}': expected a UID"
            )
        if syntax == ref.transfer_syntax_uid:
            _audit_retrieve(request, ref)
            return StreamingResponse(read_chunks(archive, ref), media_type=DICOM)
        targets = [str(target) for target in supported_targets()]
        if syntax not in targets or not can_decode(ref.transfer_syntax_uid):
            raise HTTPException(
                status.HTTP_406_NOT_ACCEPTABLE,
                f"Instance {ref.sop_instance_uid} is stored in "
                f"{describe_syntax(ref.transfer_syntax_uid)} and cannot be sent in {syntax}; "
                f"the archive converts to {', '.join(targets)}",
            )
        try:
            with open_instance(archive, ref) as stream:
                data = encode_instance(stream, syntax)
        except ConversionError as exc:
            raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, str(exc)) from None
        _audit_retrieve(request, ref)
        return Response(data, media_type=DICOM)

    frame = int(_number(request, "frameNumber", 1, 2**31 - 1) or 1)
    if frame > ref.number_of_frames:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"Frame {frame} does not exist; the instance has {ref.number_of_frames} frames",
        )
    center = _number(request, "windowCenter", -1e12, 1e12)
    width = _number(request, "windowWidth", 1, 1e12)
    if (center is None) != (width is None):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "windowCenter and windowWidth must be given together"
        )
    rows = _number(request, "rows", 1, MAX_VIEWPORT)
    columns = _number(request, "columns", 1, MAX_VIEWPORT)
    viewport = None
    if rows is not None or columns is not None:
        viewport = (int(columns or MAX_VIEWPORT), int(rows or MAX_VIEWPORT))
    quality = int(_number(request, "imageQuality", 1, 100) or 90)
    options = RenderOptions(
        media_type=media_type,
        window=Window(center, width) if center is not None and width is not None else None,
        viewport=viewport,
        quality=quality,
    )
    try:
        with open_instance(archive, ref) as stream:
            ds, pixels = read_frame(stream, frame - 1)
        image = render_frame(ds, pixels, options)
    except RenderError as exc:
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE,
            f"Instance {ref.sop_instance_uid} cannot be rendered: {exc}; "
            "request contentType=application/dicom",
        ) from None
    return Response(image, media_type=media_type)
