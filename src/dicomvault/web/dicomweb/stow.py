"""STOW-RS (PS3.18 10.5): store DICOM files sent over HTTP through the archive, as C-STORE does.

The request body is spooled to a temporary file as it arrives, and every
part is checked before anything is stored. A malformed multipart body, an
unsupported media type or a part that is not a DICOM file fails the whole
request with a 4xx and stores nothing. Then each instance goes through :meth:`Archive.store`,
the path of C-STORE, with its durability and duplicate rules, and the
response lists what was stored and what failed, and why.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import re
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydicom.dataset import Dataset
from pydicom.uid import RE_VALID_UID
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from dicomvault.archive import (
    Archive,
    DuplicateInstanceError,
    IndexUnavailableError,
    InstanceMismatchError,
    StorageError,
    StorageFullError,
    StoreResult,
    StudyMismatchError,
)
from dicomvault.dicom.header import (
    InvalidDatasetError,
    MissingAttributeError,
    UnsupportedTransferSyntaxError,
    read_header,
)
from dicomvault.dicom.part10 import Part10File, split_part10
from dicomvault.web.dicomweb.multipart import (
    MultipartError,
    MultipartReader,
    PartSpool,
    PayloadTooLargeError,
    SpooledPart,
    parse_media_type,
)

LOGGER = logging.getLogger(__name__)

DICOM_MEDIA_TYPE = "application/dicom"
DICOM_JSON_MEDIA_TYPE = "application/dicom+json"
MULTIPART_RELATED = "multipart/related"
# The metadata and bulk data form of STOW-RS (PS3.18 10.5.1.2), not supported.
METADATA_MEDIA_TYPES = frozenset({"application/dicom+json", "application/dicom+xml"})
# Bytes read from the start of a part to find its File Meta Information; a
# longer group 0002 is read from the whole part.
META_PREFIX_SIZE = 64 * 1024
# Request body chunks are gathered up to this size before a thread writes them to the spool.
WRITE_BATCH_SIZE = 1024 * 1024
# Warning header fields (RFC 7234 5.5) sent with a response, one per failed
# or warned instance; the last one counts the rest.
MAX_WARNING_HEADERS = 20
MAX_WARNING_TEXT = 400
WARN_AGENT = "dicomvault"

router = APIRouter(tags=["DICOMweb STOW-RS"])


class FailureReason(enum.IntEnum):
    """Failure Reason (0008,1197) values (PS3.18 Table I.2-2, PS3.7 C.5)."""

    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
    # Implementation specific, in the "cannot understand" range Cxxx.
    STUDY_INSTANCE_UID_MISMATCH = 0xC409


class WarningReason(enum.IntEnum):
    """Warning Reason (0008,1196) values (PS3.18 Table I.2-1)."""

    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xB007


# Domain error -> Failure Reason, most specific first.
STORE_FAILURES: tuple[tuple[type[Exception], FailureReason], ...] = (
    (StudyMismatchError, FailureReason.STUDY_INSTANCE_UID_MISMATCH),
    (MissingAttributeError, FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    (InstanceMismatchError, FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    (UnsupportedTransferSyntaxError, FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED),
    (InvalidDatasetError, FailureReason.CANNOT_UNDERSTAND),
    (DuplicateInstanceError, FailureReason.DUPLICATE_SOP_INSTANCE),
    (StorageFullError, FailureReason.OUT_OF_RESOURCES),
    (StorageError, FailureReason.PROCESSING_FAILURE),
    (IndexUnavailableError, FailureReason.PROCESSING_FAILURE),
)

_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            "DICOM files (PS3.10), each in a part of a multipart/related body with "
            'type="application/dicom", or one file as the whole body with Content-Type '
            "application/dicom."
        ),
        "content": {
            'multipart/related; type="application/dicom"': {
                "schema": {"type": "string", "format": "binary"}
            },
            DICOM_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Every instance was stored.", "content": {DICOM_JSON_MEDIA_TYPE: {}}},
    202: {
        "description": "Some instances were stored; others failed or were stored with warnings.",
        "content": {DICOM_JSON_MEDIA_TYPE: {}},
    },
    400: {"description": "Malformed body, a part that is not a DICOM file, or an invalid UID."},
    409: {"description": "No instance was stored.", "content": {DICOM_JSON_MEDIA_TYPE: {}}},
    507: {
        "description": "No instance was stored because the storage is full or read-only.",
        "content": {DICOM_JSON_MEDIA_TYPE: {}},
    },
    413: {"description": "An instance or the body exceeds a size limit."},
    415: {"description": "The request or a part has an unsupported media type."},
}


class StowRequestError(Exception):
    """The request as a whole cannot be processed; nothing was stored."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclasses.dataclass(frozen=True)
class _Instance:
    """A part identified as a DICOM file, ready to store."""

    part: SpooledPart
    meta: Part10File
    sop_class_uid: str
    sop_instance_uid: str


@dataclasses.dataclass(frozen=True)
class _Outcome:
    """The outcome of one instance: stored (``result``) or failed (``reason``)."""

    instance: _Instance
    result: StoreResult | None = None
    reason: FailureReason | None = None
    message: str = ""


@router.post(
    "/studies",
    summary="Store instances (STOW-RS)",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra=_REQUEST_BODY,
)
async def store_instances(request: Request) -> Response:
    """Store the DICOM files of the request body, in any studies.

    Notes
    -----
    Statuses returned (PS3.18 10.5.3):

    - 200: every instance is durable and indexed.
    - 202: some instances were stored, and others failed or were stored
      with a warning; the body lists which and why.
    - 409: no instance was stored; the FailedSOPSequence gives each reason.
    - 507: no instance was stored because the storage is full or
      read-only (every Failure Reason is 0xA700, RFC 4918 11.5). The same
      request may succeed once the storage takes writes again.
    - 400: the body is not well-formed multipart, has no part, or a part is
      not a DICOM file or has no SOP Class or SOP Instance UID. Nothing is stored.
    - 413: an instance or the whole body exceeds ``http.stow_max_instance_size``
      or ``http.stow_max_request_size``, or has more parts than
      ``http.stow_max_parts``. Nothing is stored.
    - 415: the Content-Type is neither multipart/related with
      type="application/dicom" nor application/dicom, or a part has another
      media type. Nothing is stored.

    Responses with failures or warnings carry one Warning header field per
    instance with the reason in words.
    """
    return await _store_request(request, "")


@router.post(
    "/studies/{study}",
    summary="Store instances of one study (STOW-RS)",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra=_REQUEST_BODY,
)
async def store_study_instances(study: str, request: Request) -> Response:
    """Store the DICOM files of the request body into the study ``study``.

    Notes
    -----
    As POST /studies. An instance whose Study Instance UID differs from
    ``study`` is not stored and has Failure Reason 0xC409. A ``study`` that
    is not a valid UID gets 400.
    """
    if not is_valid_uid(study):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"'{study}' is not a valid Study Instance UID: a UID has at most 64 "
            "characters, digits in components separated by '.', without leading zeros",
        )
    return await _store_request(request, study)


async def _store_request(request: Request, study: str) -> Response:
    archive: Archive = request.app.state.archive
    client = request.client.host if request.client else "unknown client"
    try:
        spool = await _spool_body(request, archive)
    except StowRequestError as exc:
        LOGGER.warning("STOW-RS request from %s rejected: %s", client, exc)
        raise HTTPException(exc.status_code, str(exc)) from None

    try:
        outcomes = await run_in_threadpool(_store_parts, archive, spool, study)
    except StowRequestError as exc:
        LOGGER.warning("STOW-RS request from %s rejected: %s", client, exc)
        raise HTTPException(exc.status_code, str(exc)) from None
    finally:
        spool.close()

    response = _store_response(outcomes, _service_base(request), study)
    stored = sum(1 for outcome in outcomes if outcome.result is not None)
    LOGGER.info(
        "STOW-RS from %s: %d of %d instances stored (HTTP %d)",
        client,
        stored,
        len(outcomes),
        response.status_code,
    )
    return response


async def _spool_body(request: Request, archive: Archive) -> PartSpool:
    """Read the request body into a spool of parts, checking media types and sizes.

    Raises
    ------
    StowRequestError
        With 400, 413 or 415, when the body cannot be stored.
    """
    settings = archive.settings.http
    declared_length = request.headers.get("content-length", "")
    if declared_length.isdigit() and int(declared_length) > settings.stow_max_request_size:
        raise StowRequestError(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"The request body has {declared_length} bytes, more than "
            f"{settings.stow_max_request_size}, the limit set by http.stow_max_request_size; "
            "send fewer instances per request",
        )

    spool = PartSpool(
        settings.stow_max_instance_size,
        settings.stow_max_request_size,
        "http.stow_max_instance_size",
        "http.stow_max_request_size",
        encrypt=archive.settings.encryption.enabled,
        max_parts=settings.stow_max_parts,
        parts_limit_name="http.stow_max_parts",
    )
    try:
        reader = _body_reader(request.headers.get("content-type", ""), spool)
        pending = bytearray()
        async for chunk in request.stream():
            pending += chunk
            if len(pending) >= WRITE_BATCH_SIZE:
                await run_in_threadpool(_write_batch, reader, spool, bytes(pending))
                pending.clear()
        await run_in_threadpool(_write_batch, reader, spool, bytes(pending))
        parts = reader.finish() if isinstance(reader, MultipartReader) else _end_single(spool)
    except MultipartError as exc:
        spool.close()
        raise StowRequestError(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    except PayloadTooLargeError as exc:
        spool.close()
        raise StowRequestError(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from None
    except ClientDisconnect:
        spool.close()
        raise StowRequestError(
            status.HTTP_400_BAD_REQUEST, "The client disconnected before the body ended"
        ) from None
    except BaseException:
        spool.close()
        raise

    if not parts:
        spool.close()
        raise StowRequestError(
            status.HTTP_400_BAD_REQUEST,
            "The request has no instance to store: the body is empty or has no part",
        )
    return spool


def _body_reader(content_type: str, spool: PartSpool) -> MultipartReader | None:
    """Return the multipart reader for ``content_type``, or None for a single DICOM file.

    Raises
    ------
    StowRequestError
        415 for an unsupported media type, 400 for a multipart type without boundary.
    """
    media_type = parse_media_type(content_type)
    if media_type.type == DICOM_MEDIA_TYPE:
        spool.begin_part({"content-type": content_type})
        return None

    if media_type.type != MULTIPART_RELATED:
        raise StowRequestError(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type '{content_type}' is not supported; send "
            'multipart/related; type="application/dicom"; boundary=... or application/dicom',
        )
    root_type = media_type.parameters.get("type", DICOM_MEDIA_TYPE).strip().lower()
    if root_type in METADATA_MEDIA_TYPES:
        raise StowRequestError(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f'multipart/related with type="{root_type}" (metadata and bulk data) is not '
            'supported; send the instances as DICOM files with type="application/dicom"',
        )
    if root_type != DICOM_MEDIA_TYPE:
        raise StowRequestError(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f'multipart/related with type="{root_type}" is not supported; '
            'send type="application/dicom"',
        )
    boundary = media_type.parameters.get("boundary", "")
    if not boundary:
        raise StowRequestError(
            status.HTTP_400_BAD_REQUEST,
            "The Content-Type multipart/related has no boundary parameter, so the parts "
            "cannot be found",
        )
    try:
        return MultipartReader(boundary, spool, _check_part_type)
    except MultipartError as exc:
        raise StowRequestError(status.HTTP_400_BAD_REQUEST, str(exc)) from None


def _check_part_type(number: int, headers: Mapping[str, str]) -> None:
    # A part without Content-Type has the root type the type parameter declares.
    content_type = headers.get("content-type", "")
    if content_type and parse_media_type(content_type).type != DICOM_MEDIA_TYPE:
        raise StowRequestError(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"Part {number} has Content-Type '{content_type}'; every part must be "
            "application/dicom",
        )


def _write_batch(reader: MultipartReader | None, spool: PartSpool, data: bytes) -> None:
    if not data:
        return
    if reader is None:
        spool.write(data)
    else:
        reader.write(data)


def _end_single(spool: PartSpool) -> list[SpooledPart]:
    spool.end_part()
    if spool.parts[0].size == 0:
        return []
    return spool.parts


def _store_parts(archive: Archive, spool: PartSpool, study: str) -> list[_Outcome]:
    """Identify every part, then store the instances one by one.

    Raises
    ------
    StowRequestError
        400 before anything is stored, when a part is not a DICOM file or its
        SOP Class or SOP Instance UID cannot be found.
    """
    instances = [_identify(spool, part) for part in spool.parts]
    return [_store_one(archive, spool, instance, study) for instance in instances]


def _identify(spool: PartSpool, part: SpooledPart) -> _Instance:
    prefix = spool.read(part, size=META_PREFIX_SIZE)
    try:
        try:
            meta = split_part10(prefix, bare_meta=True)
        except InvalidDatasetError:
            if len(prefix) == part.size:
                raise
            meta = split_part10(spool.read(part), bare_meta=True)
    except InvalidDatasetError as exc:
        raise StowRequestError(
            status.HTTP_400_BAD_REQUEST, f"Part {part.number} is not a DICOM file: {exc}"
        ) from None

    sop_class_uid = meta.media_storage_sop_class_uid
    sop_instance_uid = meta.media_storage_sop_instance_uid
    if not sop_class_uid or not sop_instance_uid:
        sop_class_uid, sop_instance_uid = _dataset_uids(spool, part, meta)
    return _Instance(part, meta, sop_class_uid, sop_instance_uid)


def _dataset_uids(spool: PartSpool, part: SpooledPart, meta: Part10File) -> tuple[str, str]:
    """Read SOP Class and Instance UIDs from the dataset, for a file meta without them."""
    dataset = spool.read(part, start=meta.dataset_offset)
    try:
        ds = read_header(dataset, meta.transfer_syntax_uid)
    except InvalidDatasetError as exc:
        raise StowRequestError(
            status.HTTP_400_BAD_REQUEST,
            f"Part {part.number} has no SOP Class or SOP Instance UID in its File Meta "
            f"Information, and its dataset cannot be read: {exc}",
        ) from None
    sop_class_uid = str(ds.get("SOPClassUID", "") or "").strip(" \x00")
    sop_instance_uid = str(ds.get("SOPInstanceUID", "") or "").strip(" \x00")
    if not sop_class_uid or not sop_instance_uid:
        raise StowRequestError(
            status.HTTP_400_BAD_REQUEST,
            f"Part {part.number} has no SOP Class UID (0008,0016) or no SOP Instance UID "
            "(0008,0018), in its dataset or its File Meta Information; every instance "
            "needs both",
        )
    return sop_class_uid, sop_instance_uid


def _store_one(archive: Archive, spool: PartSpool, instance: _Instance, study: str) -> _Outcome:
    part = instance.part
    # Read from the dataset's start, so that only one copy of it is in memory.
    dataset = spool.read(part, start=instance.meta.dataset_offset)
    try:
        result = archive.store(
            dataset=dataset,
            transfer_syntax_uid=instance.meta.transfer_syntax_uid,
            sop_class_uid=instance.sop_class_uid,
            study_instance_uid=study,
            service="STOW-RS",
        )
    except Exception as exc:
        reason, message = _failure(exc)
        LOGGER.error(
            "STOW-RS of %s (part %d) failed with Failure Reason 0x%04X: %s",
            instance.sop_instance_uid,
            part.number,
            reason,
            message,
        )
        return _Outcome(instance, reason=reason, message=message)

    if result.sop_instance_uid != instance.sop_instance_uid:
        # The archive writes a new File Meta Information from the dataset's UIDs.
        LOGGER.warning(
            "Stored %s over STOW-RS, though the File Meta Information of part %d has "
            "Media Storage SOP Instance UID %s",
            result.sop_instance_uid,
            part.number,
            instance.sop_instance_uid,
        )
    for warning in result.warnings:
        LOGGER.warning(
            "Stored %s over STOW-RS with a warning: %s", result.sop_instance_uid, warning
        )
    return _Outcome(instance, result=result)


def _failure(exc: Exception) -> tuple[FailureReason, str]:
    for error_type, reason in STORE_FAILURES:
        if isinstance(exc, error_type):
            if isinstance(exc, DuplicateInstanceError):
                return reason, "The instance is already stored, and duplicates are rejected"
            return reason, str(exc)
    LOGGER.exception("STOW-RS store failed unexpectedly")
    return FailureReason.PROCESSING_FAILURE, f"Internal error: {type(exc).__name__}"


def _service_base(request: Request) -> str:
    """Return the DICOMweb base URL: the request URL up to '/studies'."""
    path = request.url.path
    base_path = path[: path.rfind("/studies")]
    return str(request.url.replace(path=base_path, query=None, fragment=None))


def is_valid_uid(value: str) -> bool:
    """Return whether ``value`` is a valid UID (PS3.5 9.1), without pydicom's validation warning."""
    return len(value) <= 64 and re.fullmatch(RE_VALID_UID, value) is not None


def _store_response(outcomes: list[_Outcome], base: str, study: str) -> Response:
    """Build the Store Instances Response Module (PS3.18 Annex I) and pick the status code."""
    ds = Dataset()
    stored_studies = {
        outcome.result.study_instance_uid for outcome in outcomes if outcome.result is not None
    }
    # Type 2: empty when no instance was stored, or the stored ones belong to several studies.
    target = next(iter(stored_studies)) if len(stored_studies) == 1 else ""
    ds.RetrieveURL = f"{base}/studies/{target}" if target else ""

    referenced: list[Dataset] = []
    failed: list[Dataset] = []
    warnings: list[str] = []
    for outcome in outcomes:
        instance = outcome.instance
        item = Dataset()
        if outcome.result is None:
            assert outcome.reason is not None
            item.ReferencedSOPClassUID = instance.sop_class_uid
            item.ReferencedSOPInstanceUID = instance.sop_instance_uid
            item.FailureReason = int(outcome.reason)
            failed.append(item)
            warnings.append(
                f"{instance.sop_instance_uid} (part {instance.part.number}) was not stored: "
                f"{outcome.message}"
            )
            continue
        result = outcome.result
        item.ReferencedSOPClassUID = result.sop_class_uid
        item.ReferencedSOPInstanceUID = result.sop_instance_uid
        item.RetrieveURL = (
            f"{base}/studies/{result.study_instance_uid}/series/"
            f"{result.series_instance_uid}/instances/{result.sop_instance_uid}"
        )
        if result.sop_class_mismatch:
            item.WarningReason = int(WarningReason.DATASET_DOES_NOT_MATCH_SOP_CLASS)
            warnings.extend(
                f"{result.sop_instance_uid} (part {instance.part.number}) was stored, but {warning}"
                for warning in result.warnings
            )
        referenced.append(item)
    if failed:
        ds.FailedSOPSequence = failed
    if referenced:
        ds.ReferencedSOPSequence = referenced

    if not referenced and all(
        outcome.reason == FailureReason.OUT_OF_RESOURCES for outcome in outcomes
    ):
        # Unlike a conflict, the same request may succeed once the storage takes writes again.
        code = status.HTTP_507_INSUFFICIENT_STORAGE
    elif not referenced:
        code = status.HTTP_409_CONFLICT
    elif failed or warnings:
        code = status.HTTP_202_ACCEPTED
    else:
        code = status.HTTP_200_OK
    response = Response(content=_json_bytes(ds), status_code=code, media_type=DICOM_JSON_MEDIA_TYPE)
    for value in _warning_values(warnings):
        response.headers.append("Warning", value)
    return response


def _json_bytes(ds: Dataset) -> bytes:
    return ds.to_json().encode("utf-8")


def _warning_values(messages: list[str]) -> list[str]:
    """Format messages as Warning header values: 299 dicomvault "text" (RFC 7234 5.5)."""
    listed = messages[:MAX_WARNING_HEADERS]
    if len(messages) > MAX_WARNING_HEADERS:
        listed[-1] = f"{len(messages) - MAX_WARNING_HEADERS + 1} more instances failed or warned"
    values = []
    for message in listed:
        text = message.encode("ascii", errors="replace").decode("ascii")
        text = text.replace("\\", "/").replace('"', "'")[:MAX_WARNING_TEXT]
        values.append(f'299 {WARN_AGENT} "{text}"')
    return values
