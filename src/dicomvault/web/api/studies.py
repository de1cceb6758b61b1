"""REST API that deletes a study or a series from the archive (admin)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from dicomvault.archive import Archive, IndexUnavailableError
from dicomvault.audit import AuditAction, AuditEventType
from dicomvault.dicom.attributes import Level
from dicomvault.index.removal import study_of_series
from dicomvault.web.audit_events import publish_audit
from dicomvault.web.dicomweb.resources import check_uid
from dicomvault.web.identity import AdminUser

LOGGER = logging.getLogger(__name__)

router = APIRouter(prefix="/api/studies", tags=["deletion"])


class Deletion(BaseModel):
    """Counts of a deletion: instances removed, files deleted, in-place files kept."""

    removed_instances: int = Field(description="Instances removed from the index.")
    deleted_files: int = Field(description="Files deleted from the archive's storage.")
    kept_in_place: int = Field(
        description="Files indexed in place, left where they are; indexing their folder "
        "again adds them back."
    )


def _delete(request: Request, level: Level, uid: str, user_name: str, study_uid: str) -> Deletion:
    archive: Archive = request.app.state.archive
    try:
        result = archive.remove(level, uid, delete_files=True)
    except IndexUnavailableError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    what = "study" if level is Level.STUDY else "series"
    if not result.removed:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"No {what} with UID {uid} is indexed")
    publish_audit(
        request,
        AuditEventType.INSTANCES_ACCESSED,
        AuditAction.DELETE,
        user_name,
        f"Deleted {what} {uid}: {len(result.removed)} instances",
        study_uids=(study_uid,),
        detail={
            "deleted_files": result.deleted_files,
            "kept_in_place": result.kept_in_place,
        },
    )
    LOGGER.info(
        "User %s deleted %s %s: %d instances, %d stored files deleted, %d in-place files kept",
        user_name,
        what,
        uid,
        len(result.removed),
        result.deleted_files,
        result.kept_in_place,
    )
    return Deletion(
        removed_instances=len(result.removed),
        deleted_files=result.deleted_files,
        kept_in_place=result.kept_in_place,
    )


@router.delete("/{study_uid}", response_model=Deletion)
def delete_study(study_uid: str, request: Request, admin: AdminUser) -> Deletion:
    """Delete a study: its index entries, and the files the archive stored or imported.

    Files indexed in place are never deleted; only their index entries go.

    Notes
    -----
    - 200: deleted; the body has the counts.
    - 400: the UID is malformed.
    - 404: no study with this UID is indexed.
    - 503: the index database failed; nothing was deleted.
    """
    check_uid("StudyInstanceUID", study_uid)
    return _delete(request, Level.STUDY, study_uid, admin.name, study_uid)


@router.delete("/{study_uid}/series/{series_uid}", response_model=Deletion)
def delete_series(study_uid: str, series_uid: str, request: Request, admin: AdminUser) -> Deletion:
    """Delete a series of a study, as a study is deleted.

    Notes
    -----
    - 200: deleted; the body has the counts.
    - 400: a UID is malformed.
    - 404: the series is not indexed, or belongs to another study.
    - 503: the index database failed; nothing was deleted.
    """
    check_uid("StudyInstanceUID", study_uid)
    check_uid("SeriesInstanceUID", series_uid)
    archive: Archive = request.app.state.archive
    try:
        owner = study_of_series(archive.engine, series_uid)
    except SQLAlchemyError:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "The index database failed; nothing was deleted"
        ) from None
    if owner != study_uid:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"No series with UID {series_uid} is indexed in study {study_uid}",
        )
    return _delete(request, Level.SERIES, series_uid, admin.name, study_uid)
