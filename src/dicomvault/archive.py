"""The archive service layer: store an instance and search the index.

DIMSE, DICOMweb and the console call this layer, so the rules live in one place. It
raises the domain errors below, which each protocol translates at its edge.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from dicomvault.config import Settings
from dicomvault.dicom.attributes import Level
from dicomvault.dicom.header import (
    InvalidDatasetError,
    describe_instance,
    encode_file_meta,
    read_header,
)
from dicomvault.dicom.matching import Query
from dicomvault.events import EventBus, InstanceRejected, InstanceStored
from dicomvault.index.group_commit import GroupCommit
from dicomvault.index.removal import remove_from_index
from dicomvault.index.search import IndexSearch, SearchResult
from dicomvault.index.writer import (
    DuplicateInstanceError,
    IndexOutcome,
    IndexWriter,
    StoredInstance,
)
from dicomvault.storage.base import Storage, StorageError, StorageFullError
from dicomvault.storage.checksum import Sha256Chunks
from dicomvault.storage.in_bucket import is_indexed_in_place
from dicomvault.storage.journal import PendingWrite, WriteJournal

LOGGER = logging.getLogger(__name__)

__all__ = [
    "Archive",
    "ArchiveError",
    "DuplicateInstanceError",
    "IndexUnavailableError",
    "InstanceMismatchError",
    "InvalidDatasetError",
    "RemovalResult",
    "StorageError",
    "StorageFullError",
    "StoreResult",
    "StudyMismatchError",
]


class ArchiveError(Exception):
    """Base of the archive's own domain errors."""


class InstanceMismatchError(ArchiveError):
    """The request's SOP Instance UID differs from the one in the dataset."""


class StudyMismatchError(ArchiveError):
    """The dataset's Study Instance UID differs from the study the request names."""


class IndexUnavailableError(ArchiveError):
    """The index database failed; nothing was stored."""


@dataclasses.dataclass(frozen=True)
class StoreResult:
    """The outcome of a successful store.

    ``warnings`` lists deviations the archive accepted (such as a SOP Class
    UID that differs between request and dataset); empty on a clean store.
    The UIDs of the SOP class, study and series are the dataset's.
    """

    sop_instance_uid: str
    storage_key: str
    size: int
    replaced: bool
    warnings: tuple[str, ...] = ()
    sop_class_mismatch: bool = False
    sop_class_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""


@dataclasses.dataclass(frozen=True)
class RemovalResult:
    """The outcome of a removal from the index.

    ``removed`` lists the SOP Instance UIDs removed; ``deleted_files`` counts
    the stored files deleted, and ``kept_in_place`` the files and bucket
    objects indexed in place, which are left where they are.
    """

    removed: tuple[str, ...]
    deleted_files: int
    kept_in_place: int


def rejection_category(exc: Exception) -> str:
    """Return the fixed word that counts a store failure in metrics, such as "duplicate"."""
    for error_type, category in _REJECTION_CATEGORIES:
        if isinstance(exc, error_type):
            return category
    return "other"


class Archive:
    """Stores instances durably and indexes them; searches the index.

    With a ``journal``, every key written is recorded until its index
    transaction ends, so that start-up can remove what a killed process
    wrote but never indexed (see :mod:`dicomvault.recovery`).
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        storage: Storage,
        events: EventBus | None = None,
        journal: WriteJournal | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.storage = storage
        self.events = events or EventBus()
        self.journal = journal
        self._unresolved: list[_UnknownWrite] = []
        self._unresolved_lock = threading.Lock()
        self.writer = IndexWriter(engine)
        # SQLite has one writer at a time: concurrent stores share commits.
        self._committer: IndexWriter | GroupCommit = (
            GroupCommit(self.writer) if engine.dialect.name == "sqlite" else self.writer
        )
        self.searcher = IndexSearch(engine)

    def store(
        self,
        dataset: bytes,
        transfer_syntax_uid: str,
        sop_class_uid: str = "",
        sop_instance_uid: str = "",
        source_ae_title: str = "",
        study_instance_uid: str = "",
        service: str = "",
    ) -> StoreResult:
        """Store an encoded dataset as received and index it.

        The bytes are written unchanged after a new File Meta Information
        header. The file is durable before the index transaction starts, and
        the index commit is the point of success. On any failure nothing of the
        new instance is left and a replaced instance is intact.

        Parameters
        ----------
        dataset : bytes
            The encoded dataset without File Meta Information.
        transfer_syntax_uid : str
            Transfer syntax the dataset is encoded in.
        sop_class_uid, sop_instance_uid : str, optional
            Affected SOP Class and Instance UIDs of the request, checked
            against the dataset when given.
        source_ae_title : str, optional
            Calling AE title, recorded in the file meta and the index.
        study_instance_uid : str, optional
            The study the request stores into, checked against the dataset
            when given, as STOW-RS to /studies/{study} requires.
        service : str, optional
            The protocol that delivered the dataset ("C-STORE", "STOW-RS"),
            passed on in the published event.

        Raises
        ------
        InvalidDatasetError
            The bytes cannot be parsed, or a required UID is missing.
        InstanceMismatchError
            ``sop_instance_uid`` differs from the dataset's SOP Instance UID.
        StudyMismatchError
            ``study_instance_uid`` differs from the dataset's Study Instance UID.
        DuplicateInstanceError
            The instance exists and the duplicate policy is ``reject``.
        StorageFullError, StorageError
            The file cannot be written.
        IndexUnavailableError
            The index transaction failed.
        """
        try:
            return self._store(
                dataset,
                transfer_syntax_uid,
                sop_class_uid,
                sop_instance_uid,
                source_ae_title,
                study_instance_uid,
                service,
            )
        except (ArchiveError, InvalidDatasetError, DuplicateInstanceError, StorageError) as exc:
            reason = "duplicate" if isinstance(exc, DuplicateInstanceError) else str(exc)
            self.events.publish(
                InstanceRejected(
                    sop_instance_uid,
                    source_ae_title,
                    reason,
                    category=rejection_category(exc),
                    service=service,
                )
            )
            raise

    def _store(
        self,
        dataset: bytes,
        transfer_syntax_uid: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        source_ae_title: str,
        study_instance_uid: str,
        service: str,
    ) -> StoreResult:
        started = time.perf_counter()
        ds = read_header(dataset, transfer_syntax_uid)
        header = describe_instance(ds, transfer_syntax_uid)
        warnings = []
        if sop_instance_uid and sop_instance_uid != header.sop_instance_uid:
            raise InstanceMismatchError(
                f"The request's Affected SOP Instance UID {sop_instance_uid} differs from the "
                f"dataset's SOP Instance UID {header.sop_instance_uid}"
            )
        if study_instance_uid and study_instance_uid != header.study_instance_uid:
            raise StudyMismatchError(
                f"The dataset's Study Instance UID {header.study_instance_uid} differs from "
                f"the study {study_instance_uid} the request stores into"
            )
        if sop_class_uid and sop_class_uid != header.sop_class_uid:
            warnings.append(
                f"the request's Affected SOP Class UID {sop_class_uid} differs from the "
                f"dataset's SOP Class UID {header.sop_class_uid}"
            )

        replace = self.settings.storage.duplicate_policy == "replace"
        if not replace and self._instance_exists(header.sop_instance_uid):
            raise DuplicateInstanceError(header.sop_instance_uid)

        meta = encode_file_meta(
            header.sop_class_uid, header.sop_instance_uid, transfer_syntax_uid, source_ae_title
        )
        key = new_storage_key()
        with self._journaled(header.sop_instance_uid, key) as pending:
            written = Sha256Chunks((meta, dataset))
            size = self.storage.put(key, written)
            outcome = self._index(
                StoredInstance(header, key, size, source_ae_title, written.hexdigest()),
                replace,
                pending,
            )
        if outcome.replaced_storage_key:
            with self._journaled(header.sop_instance_uid, outcome.replaced_storage_key):
                self.storage.delete(outcome.replaced_storage_key)

        self.events.publish(
            InstanceStored(
                sop_instance_uid=header.sop_instance_uid,
                sop_class_uid=header.sop_class_uid,
                study_instance_uid=header.study_instance_uid,
                transfer_syntax_uid=transfer_syntax_uid,
                size=size,
                source_ae_title=source_ae_title,
                replaced=outcome.replaced,
                service=service,
                duration=time.perf_counter() - started,
            )
        )
        return StoreResult(
            header.sop_instance_uid,
            key,
            size,
            outcome.replaced,
            tuple(warnings),
            sop_class_mismatch=bool(sop_class_uid and sop_class_uid != header.sop_class_uid),
            sop_class_uid=header.sop_class_uid,
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
        )

    def _index(
        self, instance: StoredInstance, replace: bool, pending: PendingWrite | None
    ) -> IndexOutcome:
        """Add a written instance to the index; delete its object if that fails.

        A commit whose reply was lost, as when the database server stops at
        that moment, may have been applied. So the index is queried again: a
        row naming the new object means success, and the object stays. When the
        database cannot be queried, the object stays until
        :meth:`resolve_unknown_writes` can tell.
        """
        uid = instance.header.sop_instance_uid
        try:
            return self._committer.add_instance(instance, replace=replace)
        except DuplicateInstanceError:
            self.storage.delete(instance.storage_key)
            raise
        except SQLAlchemyError as exc:
            failure = exc
        LOGGER.error("Index update failed for %s: %s", uid, failure)
        try:
            indexed_key = self.writer.indexed_storage_key(uid)
        except SQLAlchemyError:
            LOGGER.warning(
                "Keeping %s of %s until the index database can tell whether its commit applied",
                instance.storage_key,
                uid,
            )
            settle = pending.defer() if pending is not None else None
            with self._unresolved_lock:
                self._unresolved.append(_UnknownWrite(uid, instance.storage_key, settle))
            raise IndexUnavailableError(
                f"Cannot index {uid}: the index database failed"
            ) from failure
        if indexed_key == instance.storage_key:
            # NOTE: the replaced object, if any, is not known here and stays
            # as an orphan that `dicomvault fsck` reports.
            LOGGER.warning("The index commit of %s applied although its reply was lost", uid)
            return IndexOutcome(replaced=False, replaced_storage_key=None)
        self.storage.delete(instance.storage_key)
        LOGGER.info("The new file of %s was removed", uid)
        raise IndexUnavailableError(f"Cannot index {uid}: the index database failed") from failure

    def resolve_unknown_writes(self) -> int:
        """Settle the objects kept after a failed commit, once the index can tell; return how many.

        Objects that the index does not name are deleted. Cheap when there
        are none; the server calls it every second.
        """
        with self._unresolved_lock:
            unresolved = list(self._unresolved)
        resolved = 0
        for write in unresolved:
            try:
                indexed = (
                    self.writer.indexed_storage_key(write.sop_instance_uid) == write.storage_key
                )
                if not indexed:
                    self.storage.delete(write.storage_key)
            except (SQLAlchemyError, OSError) as exc:
                LOGGER.debug("Cannot settle %s yet: %s", write.storage_key, exc)
                break
            if write.settle is not None:
                write.settle()
            with self._unresolved_lock:
                self._unresolved.remove(write)
            resolved += 1
            LOGGER.info(
                "%s of %s, kept after a failed commit, was %s",
                write.storage_key,
                write.sop_instance_uid,
                "indexed after all" if indexed else "removed",
            )
        return resolved

    def _journaled(
        self, sop_instance_uid: str, storage_key: str
    ) -> contextlib.AbstractContextManager[PendingWrite | None]:
        """Record a key in the write journal for the block, when the archive has one."""
        if self.journal is None:
            return contextlib.nullcontext()
        return self.journal.writing(sop_instance_uid, storage_key)

    def _instance_exists(self, sop_instance_uid: str) -> bool:
        try:
            return self.writer.instance_exists(sop_instance_uid)
        except SQLAlchemyError as exc:
            raise IndexUnavailableError(
                f"Cannot check whether {sop_instance_uid} exists: the index database failed"
            ) from exc

    def remove(self, level: Level, uid: str, delete_files: bool = False) -> RemovalResult:
        """Remove a study, series or instance from the index, and optionally its files.

        Only files in the archive's storage (received or imported) are
        deleted, after the index transaction has committed. Files and bucket
        objects indexed in place are never deleted.

        Raises
        ------
        ValueError
            If ``level`` is PATIENT.
        IndexUnavailableError
            If the index database fails; nothing is removed then.
        """
        try:
            removed = remove_from_index(self.engine, level, uid)
        except SQLAlchemyError as exc:
            raise IndexUnavailableError(f"Cannot remove {uid}: the index database failed") from exc
        deleted = kept = 0
        for item in removed:
            if is_indexed_in_place(item.storage_key):
                kept += 1
            elif delete_files:
                self.storage.delete(item.storage_key)
                deleted += 1
        return RemovalResult(tuple(item.sop_instance_uid for item in removed), deleted, kept)

    def search(self, query: Query) -> Iterator[SearchResult]:
        """Yield the index entries matching ``query``; see :class:`IndexSearch`.

        Raises
        ------
        IndexUnavailableError
            If the index database fails.
        """
        try:
            yield from self.searcher.search(query)
        except SQLAlchemyError as exc:
            raise IndexUnavailableError(f"The index database failed: {exc}") from exc

    def headers(self, level: Level, pks: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Return the stored DICOM JSON headers of entities found by :meth:`search`.

        ``pks`` are primary keys of ``level`` from ``SearchResult.pks``.

        Raises
        ------
        IndexUnavailableError
            If the index database fails.
        """
        try:
            return self.searcher.headers(level, pks)
        except SQLAlchemyError as exc:
            raise IndexUnavailableError(f"The index database failed: {exc}") from exc


# Store failures by the word that counts them, most specific first.
_REJECTION_CATEGORIES: tuple[tuple[type[Exception], str], ...] = (
    (InvalidDatasetError, "invalid_dataset"),
    (InstanceMismatchError, "uid_mismatch"),
    (StudyMismatchError, "uid_mismatch"),
    (DuplicateInstanceError, "duplicate"),
    (StorageFullError, "storage_full"),
    (StorageError, "storage_error"),
    (IndexUnavailableError, "index_error"),
)


@dataclasses.dataclass(frozen=True)
class _UnknownWrite:
    """An object kept after a failed commit whose outcome the index could not tell."""

    sop_instance_uid: str
    storage_key: str
    settle: Callable[[], None] | None


def new_storage_key() -> str:
    """Return a new unique storage key spread over two folder levels."""
    name = uuid.uuid4().hex
    return f"{name[:2]}/{name[2:4]}/{name}.dcm"
