"""REST API of storage and index usage: entity counts and bytes stored (admin)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from dicomvault.archive import Archive
from dicomvault.index.usage import count_usage
from dicomvault.web.identity import AdminUser

router = APIRouter(prefix="/api/usage", tags=["usage"])


class Usage(BaseModel):
    """Entity counts of the index and the space their files take."""

    patients: int
    studies: int
    series: int
    instances: int
    stored_instances: int = Field(description="Files in the archive's storage.")
    stored_bytes: int
    in_place_instances: int = Field(description="Files indexed where they are.")
    in_place_bytes: int
    storage_free_bytes: int | None = Field(
        description=(
            "Free space of the file system holding the storage; null if unknown, as for S3."
        )
    )


@router.get("", response_model=Usage)
def get_usage(request: Request, admin: AdminUser) -> Usage:
    """Count patients, studies, series and instances, and add up their file sizes.

    Sizes come from the index, as recorded when each file was stored or
    indexed.

    Notes
    -----
    - 503: the index database failed.
    """
    archive: Archive = request.app.state.archive
    try:
        usage = count_usage(archive.engine)
    except SQLAlchemyError:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "The index database failed; try again"
        ) from None
    free = archive.storage.free_bytes()
    return Usage(
        patients=usage.patients,
        studies=usage.studies,
        series=usage.series,
        instances=usage.instances,
        stored_instances=usage.stored_instances,
        stored_bytes=usage.stored_bytes,
        in_place_instances=usage.in_place_instances,
        in_place_bytes=usage.in_place_bytes,
        storage_free_bytes=free,
    )
