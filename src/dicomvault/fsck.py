"""Check that the index and the storage agree, and repair what can be repaired.

The check finds index rows whose object is gone (missing), objects no row
points to (orphans), objects whose SHA-256 differs from the one recorded at
ingest, temporary files left by interrupted writes, and rows whose parent
row is gone. The repair re-indexes orphans, removes temporary leftovers,
and removes missing instances and rows without parents from the index, so
that C-FIND, QIDO-RS and WADO-RS never return what cannot be retrieved.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import logging
from collections.abc import Iterator

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import SQLAlchemyError

from dicomvault.audit import (
    ActorKind,
    AuditAction,
    AuditEvent,
    AuditEventType,
    AuditOutcome,
    AuditTrail,
)
from dicomvault.dicom.attributes import Level
from dicomvault.dicom.header import InvalidDatasetError
from dicomvault.dicom.part10 import split_part10
from dicomvault.index.removal import remove_from_index
from dicomvault.index.schema import instances, patients, series, studies
from dicomvault.index.writer import DuplicateInstanceError, IndexWriter, StoredInstance
from dicomvault.ingest.reader import describe_dataset
from dicomvault.readiness import PROBE_KEY_PREFIX
from dicomvault.storage.base import Storage, StorageError
from dicomvault.storage.checksum import sha256_of_stream
from dicomvault.storage.encrypted import EncryptedStorage
from dicomvault.storage.filesystem import FilesystemStorage
from dicomvault.storage.in_bucket import is_indexed_in_place
from dicomvault.storage.s3 import S3Storage

LOGGER = logging.getLogger(__name__)

# The actor of the audit events that a repair records.
FSCK_ACTOR = "dicomvault fsck"


class ProblemKind(enum.StrEnum):
    """A kind of disagreement between index and storage, as the report names it."""

    MISSING = "missing"
    ORPHAN = "orphan"
    CHECKSUM = "checksum-mismatch"
    TEMPORARY = "temporary"
    PARENTLESS = "no-parent"


@dataclasses.dataclass
class Problem:
    """One problem found: its kind, the storage key or row it concerns, and a sentence.

    ``uid`` is the SOP, Series or Study Instance UID of the row, empty for
    objects without a row. ``repaired`` is set by :func:`repair_archive`.
    """

    kind: ProblemKind
    key: str
    uid: str
    detail: str
    repaired: bool = False


@dataclasses.dataclass
class FsckReport:
    """The result of a check: what was looked at and the problems found."""

    instances: int = 0
    objects: int = 0
    verified: int = 0
    without_checksum: int = 0
    problems: list[Problem] = dataclasses.field(default_factory=list)

    def count(self, kind: ProblemKind) -> int:
        """Return the number of problems of ``kind``."""
        return sum(1 for problem in self.problems if problem.kind is kind)

    @property
    def unrepaired(self) -> list[Problem]:
        """The problems that no repair has fixed."""
        return [problem for problem in self.problems if not problem.repaired]


@dataclasses.dataclass(frozen=True)
class _Row:
    sop_instance_uid: str
    storage_key: str
    sha256: str | None


def check_archive(engine: Engine, storage: Storage, verify_checksums: bool = False) -> FsckReport:
    """Compare the index with the storage; return the problems found. Nothing is changed.

    The storage is listed before the index is read, so an instance stored
    while the check runs is not reported as an orphan. Each index row whose
    key the listing lacks is checked again with ``exists``, so one indexed
    after the listing is not reported as missing either.

    Parameters
    ----------
    engine : Engine
        The migrated index database.
    storage : Storage
        The archive's storage, as :func:`dicomvault.storage.setup.open_storage` opens it.
    verify_checksums : bool
        Whether to read every object and compare its SHA-256 with the recorded one.

    Raises
    ------
    StorageError
        If the storage cannot be listed.
    sqlalchemy.exc.SQLAlchemyError
        If the index database fails.
    """
    inner = _inner_storage(storage)
    report = FsckReport()
    stored_keys: set[str] = set()
    for key in inner.iter_keys():
        if key.startswith(PROBE_KEY_PREFIX + "/"):
            detail = "object left by a storage readiness check that was interrupted"
            report.problems.append(Problem(ProblemKind.TEMPORARY, key, "", detail))
        else:
            stored_keys.add(key)
    report.objects = len(stored_keys)
    report.problems.extend(_temporary_leftovers(inner))

    # NOTE: the keys of the index and the storage are held in memory, an
    # estimated 400 bytes per instance, so about 400 MB for a million instances.
    indexed_keys: set[str] = set()
    for row in _instance_rows(engine):
        report.instances += 1
        indexed_keys.add(row.storage_key)
        owned = not is_indexed_in_place(row.storage_key)
        present = row.storage_key in stored_keys if owned else False
        if not present and not _exists(storage, row.storage_key):
            detail = "the index points to an object that the storage does not have"
            report.problems.append(
                Problem(ProblemKind.MISSING, row.storage_key, row.sop_instance_uid, detail)
            )
            continue
        if not verify_checksums:
            continue
        if row.sha256 is None:
            report.without_checksum += 1
            continue
        problem = _verify(storage, row)
        report.verified += 1
        if problem is not None:
            report.problems.append(problem)

    for key in sorted(stored_keys - indexed_keys):
        detail = "the storage has an object that no index row points to"
        report.problems.append(Problem(ProblemKind.ORPHAN, key, "", detail))
    report.problems.extend(_parentless_rows(engine))
    return report


def repair_archive(engine: Engine, storage: Storage, report: FsckReport) -> None:
    """Repair the problems of ``report`` that can be repaired, marking each one repaired.

    Orphans are read like an import and indexed, before missing instances
    are handled, so an orphan that is the only copy of a missing instance
    takes its place. An orphan whose SOP Instance UID is indexed with a
    present object is deleted when it has the same dataset (the File Meta
    Information may differ) and the indexed object matches its recorded
    SHA-256, and left as it is otherwise. Temporary leftovers are deleted.
    Missing instances and rows without parents are removed from the index,
    with a WARNING log line and an audit event per instance. Checksum
    mismatches are never repaired: the original bytes are gone, so only a
    backup can restore them.

    Call this only while no other process writes to the storage, such as
    with the data directory lock held.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        If the index database fails; what was repaired until then stays repaired.
    """
    writer = IndexWriter(engine)
    trail = AuditTrail(engine)
    missing = {p.uid: p for p in report.problems if p.kind is ProblemKind.MISSING}

    for problem in _of_kind(report, ProblemKind.PARENTLESS):
        _remove_parentless(engine, storage, writer, problem)
        if problem.repaired:
            _audit_removal(trail, problem)
    for problem in _of_kind(report, ProblemKind.ORPHAN):
        _reindex_orphan(storage, writer, problem, missing)
    for problem in _of_kind(report, ProblemKind.MISSING):
        if problem.repaired:
            continue
        removed = remove_from_index(engine, Level.IMAGE, problem.uid)
        problem.repaired = True
        if removed:
            LOGGER.warning(
                "Removed instance %s from the index: its object %s is missing",
                problem.uid,
                problem.key,
            )
            _audit_removal(trail, problem)
    _remove_temporary(storage, report)


def _inner_storage(storage: Storage) -> FilesystemStorage | S3Storage:
    inner = storage.inner if isinstance(storage, EncryptedStorage) else storage
    if not isinstance(inner, FilesystemStorage | S3Storage):
        raise TypeError(f"Cannot check storage {storage.describe()}: it cannot list its objects")
    return inner


def _instance_rows(engine: Engine) -> Iterator[_Row]:
    query = select(instances.c.sop_instance_uid, instances.c.storage_key, instances.c.sha256)
    with engine.connect() as connection:
        for row in connection.execute(query):
            yield _Row(row.sop_instance_uid, row.storage_key, row.sha256)


def _exists(storage: Storage, key: str) -> bool:
    try:
        return storage.exists(key)
    except (StorageError, ValueError) as exc:
        LOGGER.warning("Cannot tell whether %s exists: %s", key, exc)
        return False


def _verify(storage: Storage, row: _Row) -> Problem | None:
    try:
        with storage.open(row.storage_key) as stream:
            actual = sha256_of_stream(stream)
    except (OSError, ValueError) as exc:
        detail = f"the object cannot be read: {exc}"
        return Problem(ProblemKind.CHECKSUM, row.storage_key, row.sop_instance_uid, detail)
    if actual == row.sha256:
        return None
    detail = f"SHA-256 is {actual}, but {row.sha256} was recorded at ingest"
    return Problem(ProblemKind.CHECKSUM, row.storage_key, row.sop_instance_uid, detail)


def _temporary_leftovers(inner: FilesystemStorage | S3Storage) -> list[Problem]:
    if isinstance(inner, FilesystemStorage):
        return [
            Problem(
                ProblemKind.TEMPORARY,
                path.relative_to(inner.root).as_posix(),
                "",
                "temporary file left by an interrupted write",
            )
            for path in sorted(inner.temp_dir.glob("*.part"))
        ]
    # Uploads younger than this may belong to a server writing now.
    cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(
        seconds=inner.min_stale_upload_age
    )
    found = []
    paginator = inner.client.get_paginator("list_multipart_uploads")
    try:
        for page in paginator.paginate(Bucket=inner.bucket, Prefix=inner.prefix):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] <= cutoff:
                    detail = "multipart upload left by an interrupted write"
                    found.append(Problem(ProblemKind.TEMPORARY, upload["Key"], "", detail))
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"Cannot list the multipart uploads of {inner.location}: {exc}") from exc
    return found


def _parentless_rows(engine: Engine) -> list[Problem]:
    checks = (
        (instances, instances.c.series_pk, series, instances.c.sop_instance_uid, "series"),
        (series, series.c.study_pk, studies, series.c.series_instance_uid, "study"),
        (studies, studies.c.patient_pk, patients, studies.c.study_instance_uid, "patient"),
    )
    found = []
    with engine.connect() as connection:
        for table, parent_pk, parent, uid_column, parent_name in checks:
            query = select(uid_column).where(parent_pk.not_in(select(parent.c.pk)))
            for uid in connection.execute(query).scalars():
                detail = f"{table.name} row whose {parent_name} row is gone"
                found.append(Problem(ProblemKind.PARENTLESS, table.name, uid, detail))
    return found


def _of_kind(report: FsckReport, kind: ProblemKind) -> list[Problem]:
    return [problem for problem in report.problems if problem.kind is kind]


def _remove_parentless(
    engine: Engine, storage: Storage, writer: IndexWriter, problem: Problem
) -> None:
    """Delete a row without parent and the rows under it; re-index their stored objects."""
    table_name, uid = problem.key, problem.uid
    with engine.begin() as connection:
        if table_name == "studies":
            study_pks = select(studies.c.pk).where(studies.c.study_instance_uid == uid)
            series_pks = select(series.c.pk).where(series.c.study_pk.in_(study_pks))
        else:
            study_pks = None
            series_pks = select(series.c.pk).where(series.c.series_instance_uid == uid)
        if table_name == "instances":
            selected = instances.c.sop_instance_uid == uid
        else:
            selected = instances.c.series_pk.in_(series_pks)
        keys = list(connection.execute(select(instances.c.storage_key).where(selected)).scalars())
        connection.execute(delete(instances).where(selected))
        if table_name != "instances":
            connection.execute(delete(series).where(series.c.pk.in_(series_pks)))
        if study_pks is not None:
            connection.execute(delete(studies).where(studies.c.pk.in_(study_pks)))
        # The parent row is gone, so no parent is left empty by these deletions.
    problem.repaired = True
    LOGGER.warning("Removed %s %s from the index: its parent row is gone", table_name, uid)

    # The objects stay, so they are indexed again under parents read from their headers.
    for key in keys:
        if is_indexed_in_place(key):
            LOGGER.warning("Index %s again with 'dicomvault index' to restore it", key)
            continue
        orphan = Problem(ProblemKind.ORPHAN, key, "", "object of a removed row without parent")
        _reindex_orphan(storage, writer, orphan, {})


def _reindex_orphan(
    storage: Storage, writer: IndexWriter, problem: Problem, missing: dict[str, Problem]
) -> None:
    try:
        with storage.open(problem.key) as stream:
            data = stream.read()
        part10 = split_part10(data)
        header = describe_dataset(data[part10.dataset_offset :], part10.transfer_syntax_uid)
    except (OSError, ValueError, InvalidDatasetError) as exc:
        problem.detail = f"orphan object is not a readable DICOM file, left as it is: {exc}"
        LOGGER.warning("Cannot index orphan object %s: %s", problem.key, exc)
        return
    uid = header.sop_instance_uid
    problem.uid = uid
    replaces_missing = uid in missing
    stored = StoredInstance(header, problem.key, len(data), "", hashlib.sha256(data).hexdigest())
    try:
        writer.add_instance(stored, replace=replaces_missing)
    except DuplicateInstanceError:
        if _is_intact_copy(writer.engine, storage, uid, data):
            # A server killed after writing the file and before its index
            # commit leaves such a copy, and the client that sends the instance
            # again gets a new one indexed with the same dataset.
            storage.delete(problem.key)
            problem.repaired = True
            problem.detail = f"orphan object is a copy of the dataset of indexed instance {uid}"
            LOGGER.warning(
                "Deleted orphan object %s: a copy of the dataset of instance %s", problem.key, uid
            )
            return
        problem.detail = (
            f"orphan object is a second copy of indexed instance {uid}, left as it is; "
            "delete it if the indexed copy is the one to keep"
        )
        LOGGER.warning("Orphan object %s is a second copy of instance %s", problem.key, uid)
        return
    problem.repaired = True
    LOGGER.warning("Indexed orphan object %s as instance %s", problem.key, uid)
    if replaces_missing:
        missing[uid].repaired = True
        missing[uid].detail += f"; replaced by orphan object {problem.key}"


def _is_intact_copy(engine: Engine, storage: Storage, sop_instance_uid: str, data: bytes) -> bool:
    """Return whether ``data`` has the dataset of the indexed object and that object is intact.

    The File Meta Information may differ, such as in the Source AE Title
    of a second C-STORE from another association. The indexed object must
    match its recorded SHA-256, so that the only intact copy is never deleted.
    """
    query = select(instances.c.storage_key, instances.c.sha256).where(
        instances.c.sop_instance_uid == sop_instance_uid
    )
    with engine.connect() as connection:
        row = connection.execute(query).first()
    # A file indexed in place may be moved or deleted by its owner, so the
    # archive's copy is kept.
    if row is None or row.sha256 is None or is_indexed_in_place(row.storage_key):
        return False
    try:
        with storage.open(row.storage_key) as stream:
            indexed = stream.read()
        indexed_offset = split_part10(indexed).dataset_offset
        offset = split_part10(data).dataset_offset
    except (OSError, StorageError, ValueError) as exc:
        LOGGER.warning("Cannot compare %s with an orphan copy: %s", row.storage_key, exc)
        return False
    if hashlib.sha256(indexed).hexdigest() != row.sha256:
        return False
    return indexed[indexed_offset:] == data[offset:]


def _remove_temporary(storage: Storage, report: FsckReport) -> None:
    temporary = _of_kind(report, ProblemKind.TEMPORARY)
    if not temporary:
        return
    inner = _inner_storage(storage)
    for problem in temporary:
        if problem.key.startswith(PROBE_KEY_PREFIX + "/"):
            inner.delete(problem.key)
            problem.repaired = True
    if isinstance(inner, FilesystemStorage):
        # The caller holds the data directory lock, so no write is in progress.
        inner.remove_temporary_files()
        for problem in temporary:
            problem.repaired = not (inner.root / problem.key).exists()
    else:
        inner.remove_temporary_files()
        for problem in temporary:
            problem.repaired = True


def _audit_removal(trail: AuditTrail, problem: Problem) -> None:
    try:
        trail.record(
            AuditEvent(
                AuditEventType.INSTANCES_ACCESSED,
                AuditAction.DELETE,
                AuditOutcome.SUCCESS,
                actor=FSCK_ACTOR,
                actor_kind=ActorKind.SYSTEM,
                description=f"fsck removed {problem.uid} from the index: {problem.detail}",
                detail={"storage_key": problem.key, "problem": problem.kind.value},
            )
        )
    except SQLAlchemyError:
        LOGGER.error("Cannot record the audit event of removing %s", problem.uid, exc_info=True)


def format_report(report: FsckReport, verify_checksums: bool, repaired: bool) -> str:
    """Return the report as text: one count line per kind of problem, then one line per problem."""
    lines = [f"Checked {report.instances} indexed instances and {report.objects} stored objects"]
    if verify_checksums:
        lines.append(
            f"Verified {report.verified} checksums; {report.without_checksum} instances "
            "have no recorded checksum (indexed before checksums were recorded)"
        )
    for kind in ProblemKind:
        found = report.count(kind)
        fixed = sum(1 for p in report.problems if p.kind is kind and p.repaired)
        line = f"{kind.value}: {found}"
        if repaired:
            line += f" ({fixed} repaired)"
        lines.append(line)
    for problem in report.problems:
        state = " [repaired]" if problem.repaired else ""
        uid = f" {problem.uid}" if problem.uid else ""
        lines.append(f"{problem.kind.value} {problem.key}{uid}: {problem.detail}{state}")
    if not report.problems:
        lines.append("The index and the storage agree")
    elif report.unrepaired and not repaired:
        lines.append("Run 'dicomvault fsck --repair' with the server stopped to repair them")
    return "\n".join(lines)
