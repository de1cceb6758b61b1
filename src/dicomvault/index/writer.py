"""Write instances into the index: one short transaction per stored instance, or per batch."""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError

from dicomvault.dicom.attributes import COLUMN_ATTRIBUTES, Level
from dicomvault.dicom.header import InstanceHeader
from dicomvault.dicom.matching import normalize_stored_time, normalize_value
from dicomvault.index.bulk_upsert import BulkUpsert
from dicomvault.index.database import write_turn
from dicomvault.index.hierarchy import prune_patient, prune_series, prune_study
from dicomvault.index.instance_upsert import InstanceUpsert, WrittenInstance
from dicomvault.index.schema import instances, patients, series, studies
from dicomvault.storage.in_bucket import is_indexed_in_place

LOGGER = logging.getLogger(__name__)

MAX_ATTEMPTS = 5


class DuplicateInstanceError(Exception):
    """The SOP Instance is already stored and the duplicate policy is 'reject'."""


@dataclasses.dataclass(frozen=True)
class StoredInstance:
    """An instance whose file is durable, ready to be indexed.

    ``sha256`` is the checksum of the plain DICOM bytes of the file in hex;
    None when it is unknown.
    """

    header: InstanceHeader
    storage_key: str
    size: int
    source_ae_title: str
    sha256: str | None = None


@dataclasses.dataclass(frozen=True)
class IndexOutcome:
    """The changes that indexing one instance made.

    ``replaced_storage_key`` is the key of the file the new one replaces; the
    caller deletes it once the transaction has committed.
    """

    replaced: bool
    replaced_storage_key: str | None


class IndexWriter:
    """Inserts and replaces instances, keeping the hierarchy consistent."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._upserts: dict[tuple[str, str, tuple[str, ...]], Any] = {}
        self._instance_upserts: dict[tuple[str, ...], BulkUpsert] = {}
        self._write_turn = write_turn(engine)
        # On PostgreSQL, where each statement is a round trip, one statement
        # writes all four levels of a stored instance.
        self._instance_upsert_statement = (
            InstanceUpsert() if engine.dialect.name == "postgresql" else None
        )

    def instance_exists(self, sop_instance_uid: str) -> bool:
        """Return whether an instance with this SOP Instance UID is indexed."""
        with self.engine.connect() as connection:
            query = select(instances.c.pk).where(instances.c.sop_instance_uid == sop_instance_uid)
            return connection.execute(query).first() is not None

    def indexed_storage_key(self, sop_instance_uid: str) -> str | None:
        """Return the storage key the index names for an instance; None if it is not indexed."""
        query = select(instances.c.storage_key).where(
            instances.c.sop_instance_uid == sop_instance_uid
        )
        with self.engine.connect() as connection:
            key: str | None = connection.execute(query).scalar_one_or_none()
        return key

    def add_instance(self, stored: StoredInstance, replace: bool = True) -> IndexOutcome:
        """Index an instance whose file is durable, in one transaction.

        Patient, study and series rows are created or updated with the values
        of this instance, so the newest instance defines them. Parents left
        without children by a replacement are removed.

        Raises
        ------
        DuplicateInstanceError
            If the SOP Instance UID is indexed and ``replace`` is False.
        sqlalchemy.exc.SQLAlchemyError
            If the database fails after the retries for concurrent writers.
        """
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                with (
                    self._write_turn,
                    self.engine.connect().execution_options(write=True) as connection,
                    connection.begin(),
                ):
                    return self._add_instance(connection, stored, replace)
            except IntegrityError:
                # Two associations created the same patient, study or series
                # at once; the loser retries and finds the winner's row.
                if attempt == MAX_ATTEMPTS:
                    raise
                LOGGER.debug(
                    "Retrying index of %s after a concurrent insert", stored.header.sop_instance_uid
                )
            except OperationalError as exc:
                if attempt == MAX_ATTEMPTS or not _is_transient(exc):
                    raise
                uid = stored.header.sop_instance_uid
                if exc.connection_invalidated:
                    LOGGER.warning("Retrying index of %s on a new connection: %s", uid, exc.orig)
                else:
                    LOGGER.debug("Retrying index of %s: %s", uid, exc.orig)
        raise AssertionError("unreachable")

    def add_instances(
        self,
        stored: Sequence[StoredInstance],
        replace: bool = True,
        also: Callable[[Connection, list[IndexOutcome | None]], None] | None = None,
    ) -> list[IndexOutcome | None]:
        """Index many instances whose files are durable, in one transaction.

        Each instance is indexed by the rules of :meth:`add_instance`, in
        order, so a later instance with the same SOP Instance UID replaces an
        earlier one. One transaction for many instances is what makes bulk
        indexing fast: each commit waits for the disk.

        Parameters
        ----------
        stored : sequence of StoredInstance
            The instances to index.
        replace : bool
            Whether an indexed SOP Instance UID is replaced; when False, its
            outcome is None and nothing of it is written.
        also : callable, optional
            Called with the connection and the outcomes before the commit, to
            write more rows in the same transaction.

        Returns
        -------
        list of IndexOutcome or None
            One outcome per instance, in order.

        Raises
        ------
        sqlalchemy.exc.SQLAlchemyError
            If the database fails after the retries for concurrent writers;
            nothing of the batch is then written.
        """
        # Built before the write lock is taken, which a SQLite index holds
        # for one writer at a time: the rows took a third of a batch's time.
        image_rows = [_image_row(item) for item in stored]
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                with (
                    self._write_turn,
                    self.engine.connect().execution_options(write=True) as connection,
                    connection.begin(),
                ):
                    outcomes = self._add_batch(connection, stored, image_rows, replace)
                    if also is not None:
                        also(connection, outcomes)
                    return outcomes
            except IntegrityError:
                if attempt == MAX_ATTEMPTS:
                    raise
                LOGGER.debug(
                    "Retrying a batch of %d instances after a concurrent insert", len(stored)
                )
            except OperationalError as exc:
                if attempt == MAX_ATTEMPTS or not _is_transient(exc):
                    raise
                log = LOGGER.warning if exc.connection_invalidated else LOGGER.debug
                log("Retrying a batch of %d instances: %s", len(stored), exc.orig)
        raise AssertionError("unreachable")

    def _add_batch(
        self,
        connection: Connection,
        stored: Sequence[StoredInstance],
        image_rows: Sequence[dict[str, Any]],
        replace: bool,
    ) -> list[IndexOutcome | None]:
        """Index a batch with few statements: one upsert per parent, one for all instances.

        The result equals indexing the instances one by one with
        :meth:`_add_instance`: the last instance of a patient, study or
        series defines its row, and parents left empty are removed.
        """
        now = datetime.datetime.now(datetime.UTC)
        existing = _existing_instances(
            connection, [item.header.sop_instance_uid for item in stored]
        )

        # Decide per instance, in order, which ones are written and what each replaces.
        outcomes: list[IndexOutcome | None] = []
        latest: dict[str, StoredInstance] = {}
        latest_rows: dict[str, dict[str, Any]] = {}
        for item, image_row in zip(stored, image_rows, strict=True):
            uid = item.header.sop_instance_uid
            earlier = latest.get(uid)
            if earlier is None and uid not in existing:
                outcomes.append(IndexOutcome(replaced=False, replaced_storage_key=None))
            elif (
                not replace
                and earlier is None
                and _is_own_write(existing[uid].storage_key, item.storage_key)
            ):
                # Written by this batch's own earlier attempt; nothing to write again.
                outcomes.append(IndexOutcome(replaced=False, replaced_storage_key=None))
                continue
            elif not replace:
                outcomes.append(None)
                continue
            else:
                old_key = earlier.storage_key if earlier else existing[uid].storage_key
                replaced_key = old_key if old_key != item.storage_key else None
                outcomes.append(IndexOutcome(replaced=True, replaced_storage_key=replaced_key))
            latest[uid] = item
            latest_rows[uid] = image_row
        if not latest:
            return outcomes

        # Parents, each upserted once with the values of its last instance.
        written = list(latest.values())
        old_series = _existing_parents(
            connection,
            series,
            "series_instance_uid",
            "study_pk",
            [i.header.series_instance_uid for i in written],
        )
        old_studies = _existing_parents(
            connection,
            studies,
            "study_instance_uid",
            "patient_pk",
            [i.header.study_instance_uid for i in written],
        )
        # Rows are built for the last instance of each parent only.
        last_of_patient: dict[str, InstanceHeader] = {}
        last_of_study: dict[str, InstanceHeader] = {}
        last_of_series: dict[str, InstanceHeader] = {}
        for item in written:
            header = item.header
            last_of_patient[patient_key(header)] = header
            last_of_study[header.study_instance_uid] = header
            last_of_series[header.series_instance_uid] = header
        patient_rows = {
            key: {"patient_key": key, **_level_row(header, Level.PATIENT), "updated_at": now}
            for key, header in last_of_patient.items()
        }
        study_rows = {
            uid: (
                patient_key(header),
                {
                    **_level_row(header, Level.STUDY),
                    "study_instance_uid": uid,
                    "updated_at": now,
                },
            )
            for uid, header in last_of_study.items()
        }
        series_rows = {
            uid: (
                header.study_instance_uid,
                {
                    **_level_row(header, Level.SERIES),
                    "series_instance_uid": uid,
                    "updated_at": now,
                },
            )
            for uid, header in last_of_series.items()
        }
        # In key order, so that concurrent batches (indexing workers on
        # PostgreSQL) lock shared parents in one order. A deadlock is still retried.
        patient_pks = {
            key: self._upsert(connection, patients, "patient_key", row)
            for key, row in sorted(patient_rows.items())
        }
        study_pks = {
            uid: self._upsert(
                connection, studies, "study_instance_uid", {**row, "patient_pk": patient_pks[key]}
            )
            for uid, (key, row) in sorted(study_rows.items())
        }
        series_pks = {
            uid: self._upsert(
                connection, series, "series_instance_uid", {**row, "study_pk": study_pks[study_uid]}
            )
            for uid, (study_uid, row) in sorted(series_rows.items())
        }

        rows = [
            {
                **latest_rows[uid],
                "series_pk": series_pks[item.header.series_instance_uid],
                "received_at": now,
            }
            for uid, item in latest.items()
        ]
        self._instance_upsert(tuple(rows[0])).execute(connection, rows)

        # Parents left empty by instances, series or studies that moved, up the
        # hierarchy. A parent created in this batch may be left empty too, when a
        # later instance of the batch moved its only child elsewhere. A batch of
        # new instances that agree on their parents (the usual bulk import)
        # moves nothing, and skips the statements.
        moved = bool(existing) or len(latest) < len(stored)
        moved = moved or _moves_parents(written)
        moved = moved or any(
            old_series[uid] != study_pks[study_uid]
            for uid, (study_uid, _row) in series_rows.items()
            if uid in old_series
        )
        moved = moved or any(
            old_studies[uid] != patient_pks[key]
            for uid, (key, _row) in study_rows.items()
            if uid in old_studies
        )
        if not moved:
            return outcomes
        for old in existing.values():
            prune_series(connection, old.series_pk)
        for series_pk in series_pks.values():
            prune_series(connection, series_pk)
        for study_pk in [*old_series.values(), *study_pks.values()]:
            prune_study(connection, study_pk)
        for patient_pk in [*old_studies.values(), *patient_pks.values()]:
            prune_patient(connection, patient_pk)
        return outcomes

    def _add_instance(
        self, connection: Connection, stored: StoredInstance, replace: bool
    ) -> IndexOutcome:
        header = stored.header
        now = datetime.datetime.now(datetime.UTC)
        patient_row = {
            "patient_key": patient_key(header),
            **_level_row(header, Level.PATIENT),
            "updated_at": now,
        }
        study_row = {
            **_level_row(header, Level.STUDY),
            "study_instance_uid": header.study_instance_uid,
            "updated_at": now,
        }
        series_row = {
            **_level_row(header, Level.SERIES),
            "series_instance_uid": header.series_instance_uid,
            "updated_at": now,
        }
        instance_row = {**_image_row(stored), "received_at": now}

        if self._instance_upsert_statement is not None:
            written = self._instance_upsert_statement.execute(
                connection, patient_row, study_row, series_row, instance_row
            )
        else:
            written = self._write_levels(
                connection, patient_row, study_row, series_row, instance_row
            )
        if written.old_storage_key is not None and not replace:
            if _is_own_write(written.old_storage_key, stored.storage_key):
                return IndexOutcome(replaced=False, replaced_storage_key=None)
            # The caller's transaction rolls back what was written.
            raise DuplicateInstanceError(header.sop_instance_uid)

        # A replacement or a corrected PatientID may move a child to another
        # parent; remove parents left empty, up the hierarchy.
        if written.old_series_pk is not None and written.old_series_pk != written.series_pk:
            prune_series(connection, written.old_series_pk)
        if written.old_study_pk is not None and written.old_study_pk != written.study_pk:
            prune_study(connection, written.old_study_pk)
        if written.old_patient_pk is not None and written.old_patient_pk != written.patient_pk:
            prune_patient(connection, written.old_patient_pk)

        if written.old_storage_key is None:
            return IndexOutcome(replaced=False, replaced_storage_key=None)
        old_key = written.old_storage_key
        return IndexOutcome(
            replaced=True, replaced_storage_key=old_key if old_key != stored.storage_key else None
        )

    def _write_levels(
        self,
        connection: Connection,
        patient_row: dict[str, Any],
        study_row: dict[str, Any],
        series_row: dict[str, Any],
        instance_row: dict[str, Any],
    ) -> WrittenInstance:
        """Write the four rows of an instance with one statement per lookup and per level.

        For SQLite, where a statement costs no round trip.
        """
        uid = instance_row["sop_instance_uid"]
        existing = connection.execute(_EXISTING_INSTANCE, {"uid": uid}).first()
        old_series = connection.execute(
            _EXISTING_SERIES, {"uid": series_row["series_instance_uid"]}
        ).first()
        old_study = connection.execute(
            _EXISTING_STUDY, {"uid": study_row["study_instance_uid"]}
        ).first()

        patient_pk = self._upsert(connection, patients, "patient_key", patient_row)
        study_pk = self._upsert(
            connection, studies, "study_instance_uid", {**study_row, "patient_pk": patient_pk}
        )
        series_pk = self._upsert(
            connection, series, "series_instance_uid", {**series_row, "study_pk": study_pk}
        )
        self._upsert(
            connection, instances, "sop_instance_uid", {**instance_row, "series_pk": series_pk}
        )
        return WrittenInstance(
            patient_pk=patient_pk,
            study_pk=study_pk,
            series_pk=series_pk,
            old_series_pk=None if existing is None else existing.series_pk,
            old_storage_key=None if existing is None else existing.storage_key,
            old_study_pk=None if old_series is None else old_series.study_pk,
            old_patient_pk=None if old_study is None else old_study.patient_pk,
        )

    def _instance_upsert(self, columns: tuple[str, ...]) -> BulkUpsert:
        upsert = self._instance_upserts.get(columns)
        if upsert is None:
            upsert = BulkUpsert(self.engine, instances, "sop_instance_uid", columns)
            self._instance_upserts[columns] = upsert
        return upsert

    def _upsert(self, connection: Connection, table: Table, key: str, row: dict[str, Any]) -> int:
        statement = self._upsert_statement(table, key, tuple(row))
        return int(connection.execute(statement, row).scalar_one())

    def _upsert_statement(self, table: Table, key: str, columns: tuple[str, ...]) -> Any:
        # Building an ON CONFLICT statement costs more than running it, so
        # each shape is built once; values are bound at execution.
        cache_key = (table.name, key, columns)
        statement = self._upserts.get(cache_key)
        if statement is None:
            insert = self._insert(table)
            statement = insert.on_conflict_do_update(
                index_elements=[key],
                set_={name: insert.excluded[name] for name in columns if name != key},
            ).returning(table.c.pk)
            self._upserts[cache_key] = statement
        return statement


# Lookups run for every stored instance; built once, with the UID bound at execution.
_EXISTING_INSTANCE = (
    select(instances.c.pk, instances.c.series_pk, instances.c.storage_key)
    .where(instances.c.sop_instance_uid == bindparam("uid"))
    .with_for_update()
)
_EXISTING_SERIES = select(series.c.pk, series.c.study_pk).where(
    series.c.series_instance_uid == bindparam("uid")
)
_EXISTING_STUDY = select(studies.c.pk, studies.c.patient_pk).where(
    studies.c.study_instance_uid == bindparam("uid")
)


@dataclasses.dataclass(frozen=True)
class _ExistingInstance:
    series_pk: int
    storage_key: str


_LOOKUP_CHUNK = 500  # UIDs per IN list, below SQLite's bound parameter limit


def _existing_instances(connection: Connection, uids: list[str]) -> dict[str, _ExistingInstance]:
    found: dict[str, _ExistingInstance] = {}
    unique = list(dict.fromkeys(uids))
    for start in range(0, len(unique), _LOOKUP_CHUNK):
        statement = (
            select(instances.c.sop_instance_uid, instances.c.series_pk, instances.c.storage_key)
            .where(instances.c.sop_instance_uid.in_(unique[start : start + _LOOKUP_CHUNK]))
            .with_for_update()
        )
        for row in connection.execute(statement):
            found[row.sop_instance_uid] = _ExistingInstance(row.series_pk, row.storage_key)
    return found


def _moves_parents(written: Sequence[StoredInstance]) -> bool:
    """Return whether instances of the batch name a series or study under two parents."""
    study_of_series: dict[str, str] = {}
    patient_of_study: dict[str, str] = {}
    for item in written:
        header = item.header
        study_uid = header.study_instance_uid
        if study_of_series.setdefault(header.series_instance_uid, study_uid) != study_uid:
            return True
        key = patient_key(header)
        if patient_of_study.setdefault(study_uid, key) != key:
            return True
    return False


def _existing_parents(
    connection: Connection, table: Table, uid_column: str, parent_column: str, uids: list[str]
) -> dict[str, int]:
    """Map each UID already indexed at this level to the pk of its parent."""
    found: dict[str, int] = {}
    unique = list(dict.fromkeys(uids))
    for start in range(0, len(unique), _LOOKUP_CHUNK):
        statement = select(table.c[uid_column], table.c[parent_column]).where(
            table.c[uid_column].in_(unique[start : start + _LOOKUP_CHUNK])
        )
        for uid, parent_pk in connection.execute(statement):
            found[uid] = parent_pk
    return found


def patient_key(header: InstanceHeader) -> str:
    """Return the identity of the patient: issuer and Patient ID, or the name if no ID.

    Instances without Patient ID are grouped by Patient Name so that
    unrelated anonymous patients do not merge into one.
    """
    patient_id = header.values.get("PatientID", "")
    issuer = header.values.get("IssuerOfPatientID", "")
    if patient_id:
        return f"id:{issuer}\\{patient_id}"
    return f"name:{header.values.get('PatientName', '')}"


# Per level: keyword, column, VR and match column of each column attribute.
_LEVEL_COLUMNS: dict[Level, tuple[tuple[str, str, str, str | None], ...]] = {
    level: tuple(
        (attribute.keyword, attribute.column, attribute.vr, attribute.match_column)
        for attribute in COLUMN_ATTRIBUTES
        if attribute.level is level
    )
    for level in Level
}


def _level_row(header: InstanceHeader, level: Level) -> dict[str, str]:
    row: dict[str, str] = {}
    values = header.values
    for keyword, column, vr, match_column in _LEVEL_COLUMNS[level]:
        value = values.get(keyword, "")
        if vr == "DA":
            # Dates are kept as YYYYMMDD (an ACR-NEMA 'YYYY.MM.DD' is rewritten)
            # so that SQL range conditions compare them as strings.
            value = normalize_stored_time(value, "DA") or value
        row[column] = value
        if match_column is not None:
            row[match_column] = match_form(value, vr)
    return row


def _image_row(item: StoredInstance) -> dict[str, Any]:
    """Return the instance's row without its series and reception time, set when written."""
    header = item.header
    return {
        **_level_row(header, Level.IMAGE),
        "sop_instance_uid": header.sop_instance_uid,
        "sop_class_uid": header.sop_class_uid,
        "transfer_syntax_uid": header.transfer_syntax_uid,
        "specific_character_set": header.specific_character_set,
        "storage_key": item.storage_key,
        "size": item.size,
        "sha256": item.sha256,
        "source_ae_title": item.source_ae_title,
        "header": header.header_json,
    }


def match_form(value: str, vr: str) -> str:
    """Return the normalized value kept in a ``*_match`` column."""
    if vr == "PN":
        return normalize_value(value, "PN", case_insensitive=True)
    if vr in {"TM", "DT"}:
        return normalize_stored_time(value.split("\\")[0], vr)
    return value


def _is_own_write(indexed_key: str, new_key: str) -> bool:
    """Return whether the indexed row is the one being written, committed by an earlier attempt.

    Files the archive writes get a new unique storage key each, so an
    indexed row with the key of the new file can only come from a commit
    of this write whose reply was lost. Keys of files indexed in place name
    the file, so an equal key there is the same file indexed again.
    """
    return indexed_key == new_key and not is_indexed_in_place(new_key)


def _is_transient(exc: OperationalError) -> bool:
    """Return whether a transaction that failed with ``exc`` may be run again.

    Besides lock conflicts, a connection lost during the transaction is
    transient: the pool replaces it and PostgreSQL has rolled back what
    was not committed. If the connection broke during COMMIT, the retried
    transaction finds the instance it wrote and replaces it with itself.

    With ``replace=False`` the retry finds the instance's own row, under
    the new file's unique storage key, and counts it as written (see
    :func:`_is_own_write`).

    NOTE: a batch retried that way runs its ``also`` callback a second
    time, so what that callback adds up may be counted twice.
    """
    if exc.connection_invalidated:
        return True
    text = str(exc.orig).lower()
    return "locked" in text or "deadlock" in text or "could not serialize" in text
