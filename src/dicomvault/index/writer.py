"""Write instances into the index: one short transaction per stored instance."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, delete, exists, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError

from dicomvault.dicom.attributes import COLUMN_ATTRIBUTES, Level
from dicomvault.dicom.header import InstanceHeader
from dicomvault.dicom.matching import normalize_stored_time, normalize_value
from dicomvault.index.schema import instances, patients, series, studies

LOGGER = logging.getLogger(__name__)

MAX_ATTEMPTS = 5


class DuplicateInstanceError(Exception):
    """The SOP Instance is already stored and the duplicate policy is 'reject'."""


@dataclasses.dataclass(frozen=True)
class StoredInstance:
    """An instance whose file is durable, ready to be indexed."""

    header: InstanceHeader
    storage_key: str
    size: int
    source_ae_title: str


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
        # SQLite has one writer at a time. A thread that finds the database
        # locked sleeps in SQLite's busy handler for 1 ms, then longer, so
        # concurrent stores queue here instead and start as soon as it is free.
        self._write_turn: AbstractContextManager[Any] = (
            threading.Lock() if engine.dialect.name == "sqlite" else nullcontext()
        )

    def instance_exists(self, sop_instance_uid: str) -> bool:
        """Return whether an instance with this SOP Instance UID is indexed."""
        with self.engine.connect() as connection:
            query = select(instances.c.pk).where(instances.c.sop_instance_uid == sop_instance_uid)
            return connection.execute(query).first() is not None

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
                LOGGER.debug("Retrying index of %s: %s", stored.header.sop_instance_uid, exc.orig)
        raise AssertionError("unreachable")

    def _add_instance(
        self, connection: Connection, stored: StoredInstance, replace: bool
    ) -> IndexOutcome:
        header = stored.header
        now = datetime.datetime.now(datetime.UTC)

        existing = connection.execute(_EXISTING_INSTANCE, {"uid": header.sop_instance_uid}).first()
        if existing is not None and not replace:
            raise DuplicateInstanceError(header.sop_instance_uid)
        old_series = connection.execute(
            _EXISTING_SERIES, {"uid": header.series_instance_uid}
        ).first()
        old_study = connection.execute(_EXISTING_STUDY, {"uid": header.study_instance_uid}).first()

        patient_pk = self._upsert(
            connection,
            patients,
            "patient_key",
            {
                "patient_key": patient_key(header),
                **_level_row(header, Level.PATIENT),
                "updated_at": now,
            },
        )
        study_pk = self._upsert(
            connection,
            studies,
            "study_instance_uid",
            {
                **_level_row(header, Level.STUDY),
                "study_instance_uid": header.study_instance_uid,
                "patient_pk": patient_pk,
                "updated_at": now,
            },
        )
        series_pk = self._upsert(
            connection,
            series,
            "series_instance_uid",
            {
                **_level_row(header, Level.SERIES),
                "series_instance_uid": header.series_instance_uid,
                "study_pk": study_pk,
                "updated_at": now,
            },
        )
        self._upsert(
            connection,
            instances,
            "sop_instance_uid",
            {
                **_level_row(header, Level.IMAGE),
                "sop_instance_uid": header.sop_instance_uid,
                "sop_class_uid": header.sop_class_uid,
                "series_pk": series_pk,
                "transfer_syntax_uid": header.transfer_syntax_uid,
                "specific_character_set": header.specific_character_set,
                "storage_key": stored.storage_key,
                "size": stored.size,
                "source_ae_title": stored.source_ae_title,
                "received_at": now,
                "header": header.header_json,
            },
        )

        # A replacement or a corrected PatientID may move a child to another
        # parent; remove parents left empty, up the hierarchy.
        if existing is not None and existing.series_pk != series_pk:
            _prune_series(connection, existing.series_pk)
        if old_series is not None and old_series.study_pk != study_pk:
            _prune_study(connection, old_series.study_pk)
        if old_study is not None and old_study.patient_pk != patient_pk:
            _prune_patient(connection, old_study.patient_pk)

        if existing is None:
            return IndexOutcome(replaced=False, replaced_storage_key=None)
        old_key = existing.storage_key if existing.storage_key != stored.storage_key else None
        return IndexOutcome(replaced=True, replaced_storage_key=old_key)

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


def _level_row(header: InstanceHeader, level: Level) -> dict[str, str]:
    row: dict[str, str] = {}
    for attribute in COLUMN_ATTRIBUTES:
        if attribute.level is not level:
            continue
        value = header.values.get(attribute.keyword, "")
        if attribute.vr == "DA":
            # Dates are kept as YYYYMMDD (an ACR-NEMA 'YYYY.MM.DD' is rewritten)
            # so that SQL range conditions compare them as strings.
            value = normalize_stored_time(value, "DA") or value
        row[attribute.column] = value
        if attribute.match_column is not None:
            row[attribute.match_column] = match_form(value, attribute.vr)
    return row


def match_form(value: str, vr: str) -> str:
    """Return the normalized value kept in a ``*_match`` column."""
    if vr == "PN":
        return normalize_value(value, "PN", case_insensitive=True)
    if vr in {"TM", "DT"}:
        return normalize_stored_time(value.split("\\")[0], vr)
    return value


def _prune_series(connection: Connection, series_pk: int) -> None:
    study_pk = connection.execute(
        select(series.c.study_pk).where(series.c.pk == series_pk)
    ).scalar_one_or_none()
    result = connection.execute(
        delete(series).where(
            series.c.pk == series_pk,
            ~exists().where(instances.c.series_pk == series_pk),
        )
    )
    if result.rowcount and study_pk is not None:
        _prune_study(connection, study_pk)


def _prune_study(connection: Connection, study_pk: int) -> None:
    patient_pk = connection.execute(
        select(studies.c.patient_pk).where(studies.c.pk == study_pk)
    ).scalar_one_or_none()
    result = connection.execute(
        delete(studies).where(
            studies.c.pk == study_pk,
            ~exists().where(series.c.study_pk == study_pk),
        )
    )
    if result.rowcount and patient_pk is not None:
        _prune_patient(connection, patient_pk)


def _prune_patient(connection: Connection, patient_pk: int) -> None:
    connection.execute(
        delete(patients).where(
            patients.c.pk == patient_pk,
            ~exists().where(studies.c.patient_pk == patient_pk),
        )
    )


def _is_transient(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "deadlock" in text or "could not serialize" in text
