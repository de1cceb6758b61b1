"""WADO-RS: retrieve frames and bulk data of an instance (PS3.18 10.4.1.1.4 and 10.4.1.1.5).

Frames go out as stored (compressed bitstreams or native bytes) when the
client accepts the stored transfer syntax, or decoded to native little
endian bytes otherwise. The archive does not compress frames.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import pydicom
from fastapi import APIRouter, HTTPException, Request, Response, status
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomvault.archive import Archive
from dicomvault.web.dicomweb import multipart_writer as multipart
from dicomvault.web.dicomweb.frame_reader import read_frames
from dicomvault.web.dicomweb.media import (
    ANY_SYNTAX,
    IMAGE_MEDIA_SYNTAXES,
    OCTET_STREAM,
    Acceptable,
    MediaTypeError,
    multipart_acceptables,
    parse_accept,
)
from dicomvault.web.dicomweb.resources import (
    ArchiveDependency,
    InstanceRef,
    find_instances,
    open_instance,
)

LOGGER = logging.getLogger(__name__)

router = APIRouter(tags=["WADO-RS"])

_FRAME_LIST_RE = re.compile(r"^[1-9]\d*(,[1-9]\d*)*$")
_TAG_RE = re.compile(r"^[0-9A-Fa-f]{8}$")
PIXEL_DATA_TAG = 0x7FE00010
LITTLE_ENDIAN_NATIVE = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))


@dataclasses.dataclass(frozen=True)
class FrameChoice:
    """The representation of frames in a response: as stored, or decoded."""

    as_stored: bool
    part_media_type: str
    transfer_syntax: str


def parse_frame_list(text: str, number_of_frames: int) -> list[int]:
    """Return the 1-based frame numbers of a frame list such as '1,3,5'.

    Raises
    ------
    HTTPException
        400 if the list is malformed, 404 if a frame does not exist.
    """
    if not _FRAME_LIST_RE.match(text):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"Invalid frame list '{text}': expected frame numbers from 1 separated by "
            "commas, such as 1,2,3",
        )
    numbers = [int(item) for item in text.split(",")]
    for number in numbers:
        if not 1 <= number <= number_of_frames:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                f"Frame {number} does not exist; the instance has {number_of_frames} frames",
            )
    return numbers


def choose_frame_representation(acceptables: list[Acceptable], stored: str) -> FrameChoice:
    """Pick the first acceptable representation of the frames of an instance.

    Raises
    ------
    HTTPException
        406 if none of ``acceptables`` can be produced from ``stored``.
    """
    stored_syntax = UID(stored)
    stored_media = _media_type_of(stored)
    for acceptable in acceptables:
        syntax = acceptable.transfer_syntax
        if acceptable.media_type == OCTET_STREAM:
            if syntax == ANY_SYNTAX or (syntax == stored and not stored_syntax.is_compressed):
                return FrameChoice(True, stored_media or OCTET_STREAM, stored)
            if syntax in {"", *LITTLE_ENDIAN_NATIVE}:
                return FrameChoice(False, OCTET_STREAM, syntax or str(ExplicitVRLittleEndian))
            continue
        syntaxes = IMAGE_MEDIA_SYNTAXES.get(acceptable.media_type, ())
        if stored in syntaxes and syntax in {"", ANY_SYNTAX, stored}:
            return FrameChoice(True, acceptable.media_type, stored)
    raise HTTPException(
        status.HTTP_406_NOT_ACCEPTABLE,
        f"The frames are stored in {stored} ({stored_syntax.name}); they are available as "
        f"{stored_media or OCTET_STREAM} with that transfer syntax, or decoded as "
        f'multipart/related; type="{OCTET_STREAM}"; transfer-syntax={ExplicitVRLittleEndian}',
    )


def _media_type_of(syntax: str) -> str:
    for media_type, syntaxes in IMAGE_MEDIA_SYNTAXES.items():
        if syntax in syntaxes and not media_type.startswith("image/x-"):
            return media_type
    return ""


def _acceptables(request: Request) -> list[Acceptable]:
    try:
        ranges = parse_accept(request.headers.get("accept"))
        return multipart_acceptables(ranges, (OCTET_STREAM, *IMAGE_MEDIA_SYNTAXES), OCTET_STREAM)
    except MediaTypeError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None


def _multipart_response(parts: list[bytes], choice: FrameChoice) -> Response:
    boundary = multipart.new_boundary()
    part_type = f"{choice.part_media_type}; transfer-syntax={choice.transfer_syntax}"
    body = b"".join(multipart.stream_parts(boundary, ((part_type, [part]) for part in parts)))
    return Response(body, media_type=multipart.content_type(choice.part_media_type, boundary))


def _pixel_frames(
    archive: Archive, ref: InstanceRef, numbers: list[int], choice: FrameChoice
) -> list[bytes]:
    """Read frames ``numbers`` of the stored file of ``ref`` in ``choice``'s form."""
    with open_instance(archive, ref) as stream:
        return read_frames(stream, numbers, choice.as_stored, ref.sop_instance_uid)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frame_list}",
    summary="Retrieve frames of an instance",
)
def retrieve_frames(
    study: str,
    series: str,
    instance: str,
    frame_list: str,
    request: Request,
    archive: ArchiveDependency,
) -> Response:
    """Return frames as multipart/related, one part per frame in request order.

    Notes
    -----
    - 200: the frames. ``application/octet-stream`` parts contain native
      little endian pixels, decoded when stored compressed. ``image/jpeg``,
      ``image/jls``, ``image/jp2``, ``image/jpx`` and ``image/dicom-rle``
      parts contain the stored bitstream (PS3.18 8.7.3.3).
    - 400: the frame list or the Accept header is malformed.
    - 404: the instance, or one of the frames, does not exist.
    - 406: the frames cannot be given in any acceptable media type.
    """
    acceptables = _acceptables(request)
    ref = find_instances(archive, study, series, instance)[0]
    numbers = parse_frame_list(frame_list, ref.number_of_frames)
    if not acceptables:
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE,
            f'Frames are sent as multipart/related; type="{OCTET_STREAM}" or a compressed '
            "image media type such as image/jpeg",
        )
    choice = choose_frame_representation(acceptables, ref.transfer_syntax_uid)
    return _multipart_response(_pixel_frames(archive, ref, numbers, choice), choice)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}",
    summary="Retrieve bulk data of an instance",
)
def retrieve_bulk_data(
    study: str,
    series: str,
    instance: str,
    tag: str,
    request: Request,
    archive: ArchiveDependency,
) -> Response:
    """Return the value of a binary attribute named by a BulkDataURI of the metadata.

    Notes
    -----
    - 200: multipart/related with one ``application/octet-stream`` part. For
      Pixel Data it contains every frame as native little endian bytes, or with
      ``transfer-syntax=*`` the stored frames, one part each when compressed.
    - 400: the tag is not 8 hexadecimal digits.
    - 404: the instance or the attribute does not exist.
    - 406: the Accept header names no octet-stream part.
    """
    if not _TAG_RE.match(tag):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"Invalid bulk data tag '{tag}': expected 8 hexadecimal digits such as 7FE00010",
        )
    acceptables = [a for a in _acceptables(request) if a.media_type == OCTET_STREAM]
    if not acceptables:
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE,
            f'Bulk data is sent as multipart/related; type="{OCTET_STREAM}" only',
        )
    ref = find_instances(archive, study, series, instance)[0]
    tag_value = int(tag, 16)
    if tag_value == PIXEL_DATA_TAG:
        choice = choose_frame_representation(acceptables, ref.transfer_syntax_uid)
        numbers = list(range(1, ref.number_of_frames + 1))
        frames = _pixel_frames(archive, ref, numbers, choice)
        parts = (
            frames
            if choice.as_stored and UID(ref.transfer_syntax_uid).is_compressed
            else [b"".join(frames)]
        )
        return _multipart_response(parts, choice)

    with open_instance(archive, ref) as stream:
        value = _bulk_value(pydicom.dcmread(stream, stop_before_pixels=True), tag_value)
    if value is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"Instance {ref.sop_instance_uid} has no binary attribute {tag.upper()}",
        )
    choice = FrameChoice(True, OCTET_STREAM, ref.transfer_syntax_uid)
    return _multipart_response([value], choice)


def _bulk_value(ds: Dataset, tag: int) -> bytes | None:
    # NOTE: BulkDataURIs name the tag only, so for a tag that occurs in
    # several sequence items the first occurrence is returned.
    if tag in ds and isinstance(ds[tag].value, bytes):
        return bytes(ds[tag].value)
    for element in ds.iterall():
        if int(element.tag) == tag and isinstance(element.value, bytes):
            return bytes(element.value)
    return None
