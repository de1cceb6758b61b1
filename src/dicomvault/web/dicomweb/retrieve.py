"""WADO-RS: retrieve studies, series and instances, and their metadata (PS3.18 10.4).

Instances stream one after another: a file sent as stored is read in chunks,
and a converted instance is encoded in memory one at a time, so a large
study is never held in memory.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import StreamingResponse
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from dicomvault.archive import Archive
from dicomvault.audit import AuditAction, AuditEventType
from dicomvault.dicom.attributes import Level
from dicomvault.transcode import ConversionError, encode_instance, supported_targets
from dicomvault.web.audit_events import publish_audit
from dicomvault.web.auth import request_principal
from dicomvault.web.dicomweb import multipart_writer as multipart
from dicomvault.web.dicomweb.dicom_json import instance_metadata
from dicomvault.web.dicomweb.media import (
    ANY_SYNTAX,
    DICOM,
    DICOM_JSON,
    MediaTypeError,
    NotAcceptableError,
    choose_instance_syntax,
    multipart_acceptables,
    parse_accept,
    single_acceptables,
)
from dicomvault.web.dicomweb.resources import (
    ArchiveDependency,
    InstanceRef,
    find_instances,
    instance_url,
    open_instance,
    read_chunks,
    service_url,
)

LOGGER = logging.getLogger(__name__)

router = APIRouter(tags=["WADO-RS"])

METADATA_BATCH = 100


def can_decode(transfer_syntax_uid: str) -> bool:
    """Return whether pixel data in this transfer syntax can be decoded here."""
    syntax = UID(transfer_syntax_uid)
    if not syntax.is_compressed:
        return syntax.is_transfer_syntax
    try:
        return bool(get_decoder(syntax).available_plugins)
    except NotImplementedError:
        return False


def _retrieve(request: Request, archive: Archive, refs: list[InstanceRef]) -> StreamingResponse:
    """Return the instances ``refs`` as multipart/related application/dicom.

    Notes
    -----
    - 200: one part per instance, each a DICOM file in the transfer syntax
      chosen from the Accept header (PS3.18 8.7.3.5): as stored for
      ``transfer-syntax=*`` or when it is the stored one, else converted.
    - 400: the Accept header is malformed.
    - 406: no acceptable media type is supported, or an instance cannot be
      converted to any acceptable transfer syntax.
    """
    try:
        ranges = parse_accept(request.headers.get("accept"))
        acceptables = multipart_acceptables(ranges, (DICOM,), DICOM)
    except MediaTypeError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    if not acceptables:
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE,
            'Instances are sent as multipart/related; type="application/dicom" only; '
            "add it to the Accept header",
        )
    targets = tuple(str(syntax) for syntax in supported_targets())
    plan = []
    for ref in refs:
        try:
            syntax = choose_instance_syntax(
                acceptables, ref.transfer_syntax_uid, targets, can_decode(ref.transfer_syntax_uid)
            )
        except NotAcceptableError as exc:
            raise HTTPException(
                status.HTTP_406_NOT_ACCEPTABLE, f"Instance {ref.sop_instance_uid}: {exc}"
            ) from None
        plan.append((ref, syntax))

    # The first part is opened, or converted, before the response starts, so
    # that a failure of a single-instance retrieve still gets a status code.
    parts = _parts(archive, plan)
    first = next(parts, None)
    if first is None:
        raise FileNotFoundError(
            f"none of the {len(plan)} instances requested has its file in the storage"
        )

    boundary = multipart.new_boundary()
    LOGGER.info(
        "WADO-RS retrieve of %d instances from %s",
        len(plan),
        request.client.host if request.client else "unknown",
    )
    # NOTE: recorded when the response starts; a client that disconnects
    # mid-stream is still recorded as having received every instance.
    publish_audit(
        request,
        AuditEventType.INSTANCES_TRANSFERRED,
        AuditAction.READ,
        request_principal(request).name,
        f"WADO-RS retrieve of {len(plan)} instances",
        study_uids=tuple(sorted({ref.study_instance_uid for ref, _ in plan})),
        detail={"operation": "WADO-RS"},
    )
    return StreamingResponse(
        multipart.stream_parts(boundary, itertools.chain([first], parts)),
        media_type=multipart.content_type(DICOM, boundary),
    )


def _parts(
    archive: Archive, plan: list[tuple[InstanceRef, str]]
) -> Iterator[tuple[str, Iterator[bytes]]]:
    """Yield the content type and chunks of each planned instance, opened in turn.

    An instance whose file is missing from the storage is left out with an
    ERROR log line, so that the body stays well formed once its status is sent.
    """
    for ref, syntax in plan:
        try:
            if syntax == ANY_SYNTAX:
                chunks = read_chunks(archive, ref)
                part = f"{DICOM}; transfer-syntax={ref.transfer_syntax_uid}", chunks
            else:
                part = f"{DICOM}; transfer-syntax={syntax}", iter([_convert(archive, ref, syntax)])
        except FileNotFoundError:
            LOGGER.error(
                "WADO-RS left out %s: its file %s is missing from the storage; "
                "'dicomvault fsck' reports such instances",
                ref.sop_instance_uid,
                ref.storage_key,
            )
            continue
        yield part


def _convert(archive: Archive, ref: InstanceRef, syntax: str) -> bytes:
    try:
        with open_instance(archive, ref) as stream:
            return encode_instance(stream, syntax)
    except ConversionError as exc:
        # NOTE: a streamed multi-instance response has already sent its
        # status. The exception then ends the body without its close
        # delimiter, and clients report an incomplete response.
        LOGGER.error("Cannot convert %s to %s: %s", ref.sop_instance_uid, syntax, exc)
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE,
            f"Instance {ref.sop_instance_uid} cannot be converted to {syntax}: {exc}",
        ) from None


def _metadata(request: Request, archive: Archive, refs: list[InstanceRef]) -> StreamingResponse:
    """Return the metadata of ``refs`` as a JSON array, streamed in batches.

    Notes
    -----
    - 200: an array with one DICOM JSON object per instance; binary values
      are BulkDataURIs under the instance's URL.
    - 406: the Accept header names no JSON media type.
    """
    try:
        ranges = parse_accept(request.headers.get("accept"))
    except MediaTypeError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    if not single_acceptables(ranges, (DICOM_JSON, "application/json")):
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE,
            "Metadata is available as application/dicom+json only; "
            'multipart/related; type="application/dicom+xml" is not supported',
        )
    base = service_url(request)
    return StreamingResponse(_metadata_chunks(archive, refs, base), media_type=DICOM_JSON)


def _metadata_chunks(archive: Archive, refs: list[InstanceRef], base: str) -> Iterator[bytes]:
    yield b"["
    for start in range(0, len(refs), METADATA_BATCH):
        batch = refs[start : start + METADATA_BATCH]
        headers = archive.headers(Level.IMAGE, [ref.pk for ref in batch])
        for number, ref in enumerate(batch, start=start):
            obj = instance_metadata(
                headers.get(ref.pk, {}), instance_url(base, ref), ref.transfer_syntax_uid
            )
            separator = b"," if number else b""
            yield separator + json.dumps(obj, ensure_ascii=False).encode("utf-8")
    yield b"]"


@router.get("/studies/{study}", summary="Retrieve a study")
def retrieve_study(study: str, request: Request, archive: ArchiveDependency) -> StreamingResponse:
    """Retrieve every instance of a study (WADO-RS); 404 if the study is unknown."""
    return _retrieve(request, archive, find_instances(archive, study))


@router.get("/studies/{study}/series/{series}", summary="Retrieve a series")
def retrieve_series(
    study: str, series: str, request: Request, archive: ArchiveDependency
) -> StreamingResponse:
    """Retrieve every instance of a series (WADO-RS); 404 if the series is unknown."""
    return _retrieve(request, archive, find_instances(archive, study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}", summary="Retrieve an instance")
def retrieve_instance(
    study: str, series: str, instance: str, request: Request, archive: ArchiveDependency
) -> StreamingResponse:
    """Retrieve one instance (WADO-RS); 404 if the instance is unknown."""
    return _retrieve(request, archive, find_instances(archive, study, series, instance))


@router.get("/studies/{study}/metadata", summary="Retrieve the metadata of a study")
def study_metadata(study: str, request: Request, archive: ArchiveDependency) -> StreamingResponse:
    """Return the metadata of every instance of a study (WADO-RS)."""
    return _metadata(request, archive, find_instances(archive, study))


@router.get("/studies/{study}/series/{series}/metadata", summary="Retrieve series metadata")
def series_metadata(
    study: str, series: str, request: Request, archive: ArchiveDependency
) -> StreamingResponse:
    """Return the metadata of every instance of a series (WADO-RS)."""
    return _metadata(request, archive, find_instances(archive, study, series))


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/metadata",
    summary="Retrieve instance metadata",
)
def instance_metadata_route(
    study: str, series: str, instance: str, request: Request, archive: ArchiveDependency
) -> StreamingResponse:
    """Return the metadata of one instance (WADO-RS)."""
    return _metadata(request, archive, find_instances(archive, study, series, instance))
