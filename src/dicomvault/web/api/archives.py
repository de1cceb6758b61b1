"""REST API of downloads: a study or a series as a zip of its stored DICOM files."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import StreamingResponse

from dicomvault.archive import Archive
from dicomvault.audit import AuditAction, AuditEventType
from dicomvault.users import User
from dicomvault.web.audit_events import publish_audit
from dicomvault.web.dicomweb.resources import InstanceRef, find_instances, read_chunks
from dicomvault.web.identity import CurrentUser
from dicomvault.web.zip_stream import stream_zip

LOGGER = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["download"])

_UNSAFE_NAME_CHARACTERS = re.compile(r"[^0-9A-Za-z._-]")
ZIP_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"application/zip": {}}, "description": "A zip of DICOM files."},
    400: {"description": "A UID is malformed."},
    404: {"description": "Nothing is stored under the UIDs."},
}


def _safe(name: str) -> str:
    """Return ``name`` with characters other than letters, digits, '.', '_' and '-' replaced."""
    return _UNSAFE_NAME_CHARACTERS.sub("_", name) or "_"


def member_name(ref: InstanceRef) -> str:
    """Return the path of an instance in a downloaded zip: study/series/instance.dcm."""
    return (
        f"{_safe(ref.study_instance_uid)}/{_safe(ref.series_instance_uid)}"
        f"/{_safe(ref.sop_instance_uid)}.dcm"
    )


def _members(archive: Archive, refs: list[InstanceRef]) -> Iterator[tuple[str, Iterator[bytes]]]:
    for ref in refs:
        yield member_name(ref), read_chunks(archive, ref)


def _zip_response(
    request: Request, user: User, refs: list[InstanceRef], filename: str
) -> StreamingResponse:
    """Stream ``refs`` as a zip; check first that every file exists, so a gap is a 500."""
    archive: Archive = request.app.state.archive
    missing = [ref for ref in refs if not archive.storage.exists(ref.storage_key)]
    if missing:
        LOGGER.error(
            "Download of %s by %s failed: %d stored files are missing, the first %s of %s",
            filename,
            user.name,
            len(missing),
            missing[0].sop_instance_uid,
            missing[0].storage_key,
        )
        raise HTTPException(
            status.HTTP_500_INTERNAL_SERVER_ERROR,
            f"{len(missing)} files of this download are missing from storage; "
            "store the instances again or remove them from the index",
        )
    LOGGER.info("User %s downloads %s: %d instances", user.name, filename, len(refs))
    publish_audit(
        request,
        AuditEventType.EXPORT,
        AuditAction.READ,
        user.name,
        f"Downloaded {filename}: {len(refs)} instances",
        study_uids=tuple(sorted({ref.study_instance_uid for ref in refs})),
    )
    return StreamingResponse(
        stream_zip(_members(archive, refs)),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get(
    "/studies/{study}/archive.zip", response_class=StreamingResponse, responses=ZIP_RESPONSES
)
def study_archive(study: str, request: Request, user: CurrentUser) -> StreamingResponse:
    """Download every instance of a study as a zip of DICOM files, as they are stored.

    Members are named ``study/series/instance.dcm`` after their UIDs. The
    zip is written while it is sent, so its size is not known in advance.
    """
    refs = find_instances(request.app.state.archive, study)
    return _zip_response(request, user, refs, f"study-{_safe(study)}.zip")


@router.get(
    "/studies/{study}/series/{series}/archive.zip",
    response_class=StreamingResponse,
    responses=ZIP_RESPONSES,
)
def series_archive(
    study: str, series: str, request: Request, user: CurrentUser
) -> StreamingResponse:
    """Download every instance of a series as a zip of DICOM files, as they are stored."""
    refs = find_instances(request.app.state.archive, study, series)
    return _zip_response(request, user, refs, f"series-{_safe(series)}.zip")
