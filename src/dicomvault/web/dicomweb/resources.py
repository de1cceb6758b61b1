"""Find the studies, series and instances a DICOMweb path names, and read their files."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Annotated, BinaryIO

from fastapi import Depends, HTTPException, Request, status

from dicomvault.archive import Archive
from dicomvault.dicom.attributes import Level
from dicomvault.dicom.matching import Condition, MatchKind, Query
from dicomvault.index.search import SearchResult
from dicomvault.web.dicomweb.media import is_uid

LOGGER = logging.getLogger(__name__)

DICOMWEB_PREFIX = "/dicomweb"
READ_CHUNK_BYTES = 256 * 1024

_UID_NAMES = {
    "StudyInstanceUID": "Study Instance UID",
    "SeriesInstanceUID": "Series Instance UID",
    "SOPInstanceUID": "SOP Instance UID",
}


@dataclasses.dataclass(frozen=True)
class InstanceRef:
    """One stored instance selected by a retrieve request."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    storage_key: str
    pk: int
    number_of_frames: int


def get_archive(request: Request) -> Archive:
    """Return the archive the application serves."""
    archive: Archive = request.app.state.archive
    return archive


async def _archive_dependency(request: Request) -> Archive:
    # FastAPI runs a coroutine dependency on the event loop. It would hand a
    # plain function to a worker thread and back, about 0.1 ms per request.
    return get_archive(request)


# The archive as a parameter of a route.
ArchiveDependency = Annotated[Archive, Depends(_archive_dependency)]


def service_url(request: Request) -> str:
    """Return the absolute URL of the DICOMweb service root, without a trailing slash.

    The setting ``http.public_url`` gives the server's URL; when it is empty,
    the scheme and the Host header of the request do.
    """
    public_url = get_archive(request).settings.http.public_url
    root = public_url or str(request.base_url).rstrip("/")
    return root + DICOMWEB_PREFIX


def check_uid(keyword: str, value: str) -> str:
    """Return ``value`` when it has the form of a UID, else raise 400 naming the attribute."""
    if not is_uid(value):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"Invalid {_UID_NAMES.get(keyword, keyword)} '{value}': a UID is up to 64 "
            "characters of digits separated by dots, such as 1.2.840.113619.2.55.3",
        )
    return value


def uid_query(level: Level, uids: dict[str, str]) -> Query:
    """Return a query for entities of ``level`` with the given UIDs (single value matching)."""
    conditions = tuple(
        Condition(keyword, "UI", MatchKind.SINGLE, value=value) for keyword, value in uids.items()
    )
    return Query(level, conditions, ())


def find_instances(
    archive: Archive,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> list[InstanceRef]:
    """Return the instances of a study, series or one instance, in storage order.

    Raises
    ------
    HTTPException
        400 if a UID is malformed, 404 if nothing is stored under the path.
    """
    uids = {"StudyInstanceUID": check_uid("StudyInstanceUID", study)}
    if series is not None:
        uids["SeriesInstanceUID"] = check_uid("SeriesInstanceUID", series)
    if instance is not None:
        uids["SOPInstanceUID"] = check_uid("SOPInstanceUID", instance)
    refs = [_ref(result) for result in archive.search(uid_query(Level.IMAGE, uids))]
    if not refs:
        raise HTTPException(status.HTTP_404_NOT_FOUND, _not_found_message(uids))
    return refs


def _not_found_message(uids: dict[str, str]) -> str:
    if "SOPInstanceUID" in uids:
        entity = f"instance {uids['SOPInstanceUID']}"
    elif "SeriesInstanceUID" in uids:
        entity = f"series {uids['SeriesInstanceUID']}"
    else:
        entity = f"study {uids['StudyInstanceUID']}"
    parents = [f"{_UID_NAMES[k]} {v}" for k, v in uids.items() if k in _UID_NAMES][:-1]
    within = f" in {' and '.join(parents)}" if parents else ""
    return f"No {entity} is stored{within}"


def _ref(result: SearchResult) -> InstanceRef:
    record = result.record
    frames_text = (record.get("NumberOfFrames") or ["1"])[0]
    try:
        frames = max(1, int(str(frames_text).strip() or "1"))
    except ValueError:
        frames = 1
    return InstanceRef(
        study_instance_uid=record["StudyInstanceUID"][0],
        series_instance_uid=record["SeriesInstanceUID"][0],
        sop_instance_uid=record["SOPInstanceUID"][0],
        sop_class_uid=record["SOPClassUID"][0],
        transfer_syntax_uid=result.transfer_syntax_uid,
        storage_key=result.storage_key,
        pk=result.pks[Level.IMAGE],
        number_of_frames=frames,
    )


def instance_url(base: str, ref: InstanceRef) -> str:
    """Return the WADO-RS URL of an instance under the service root ``base``."""
    return (
        f"{base}/studies/{ref.study_instance_uid}/series/{ref.series_instance_uid}"
        f"/instances/{ref.sop_instance_uid}"
    )


def open_instance(archive: Archive, ref: InstanceRef) -> BinaryIO:
    """Open the stored file of ``ref`` as a seekable stream, for pydicom to read.

    The stream returns the file's bytes, decrypted when the archive encrypts
    stored files. The caller closes it.

    Raises
    ------
    OSError
        If the file is missing or cannot be read or decrypted.
    """
    return archive.storage.open(ref.storage_key)


def read_chunks(archive: Archive, ref: InstanceRef) -> Iterator[bytes]:
    """Open the stored file of ``ref`` now; return its bytes in chunks of READ_CHUNK_BYTES.

    Opening before the caller iterates lets a response report a missing
    file with a status code instead of cutting its body.

    Raises
    ------
    OSError
        If the file is missing or cannot be opened.
    """
    return chunks_of(open_instance(archive, ref))


def chunks_of(stream: BinaryIO) -> Iterator[bytes]:
    """Yield the bytes of an open stream in chunks of READ_CHUNK_BYTES; close it at the end."""
    with stream:
        while chunk := stream.read(READ_CHUNK_BYTES):
            yield chunk
