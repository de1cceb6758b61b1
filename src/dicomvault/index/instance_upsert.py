"""Write an instance and its patient, study and series rows with one PostgreSQL statement.

Each statement sent to PostgreSQL costs a round trip. In place of three
lookups of the rows an instance may replace or move and one upsert per
level, :class:`InstanceUpsert` sends one ``WITH`` statement. Its
data-modifying parts chain the four ``INSERT ... ON CONFLICT DO UPDATE
... RETURNING pk``, and its main query returns the new primary keys with
the rows as they were before the statement.

Every part of the statement reads the database as it was when the
statement started, and no part reads the writes of another (the
PostgreSQL manual, "Data-Modifying Statements in WITH"). So the lookups
of the existing series and study return their parents from before this
write, as the separate lookups of the SQLite path do. The existing
instance is read with ``FOR UPDATE``, and the patient upsert reads its
row count first, so the instance row is locked before any parent, in the
order of the SQLite path, and a concurrent replacement of the same
instance is waited for and seen.

NOTE: the parents of the existing series and study are read from the
snapshot taken before that wait. If the concurrent replacement moved the
series to another study, the study it moved to may be left empty. The
separate lookups run after the wait and see the move.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import CTE, Connection, FromClause, Select, Table, bindparam, func, select, true
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import ColumnElement

from dicomvault.index.schema import instances, patients, series, studies


@dataclasses.dataclass(frozen=True)
class WrittenInstance:
    """The primary keys after writing an instance, and what its rows were before.

    ``old_series_pk`` and ``old_storage_key`` describe the instance row that
    was replaced, and are None for a new instance. ``old_study_pk`` is the
    study of the series before the write, and ``old_patient_pk`` the patient
    of the study before the write, each None when that row is new.
    """

    patient_pk: int
    study_pk: int
    series_pk: int
    old_series_pk: int | None
    old_storage_key: str | None
    old_study_pk: int | None
    old_patient_pk: int | None


class InstanceUpsert:
    """Build and run the one statement that writes an instance and its parents.

    Statements are built once per set of columns and kept, because building
    one costs more than running it.
    """

    def __init__(self) -> None:
        self._statements: dict[tuple[tuple[str, ...], ...], Select[Any]] = {}

    def execute(
        self,
        connection: Connection,
        patient_row: Mapping[str, Any],
        study_row: Mapping[str, Any],
        series_row: Mapping[str, Any],
        instance_row: Mapping[str, Any],
    ) -> WrittenInstance:
        """Write the four rows in the caller's transaction; return the keys.

        The study, series and instance rows carry no parent key: the
        statement takes it from the row written at the level above.
        """
        rows = (
            (patients, patient_row),
            (studies, study_row),
            (series, series_row),
            (instances, instance_row),
        )
        shape = tuple(tuple(row) for _table, row in rows)
        statement = self._statements.get(shape)
        if statement is None:
            statement = _build_statement(*shape)
            self._statements[shape] = statement

        parameters = {
            _parameter_name(table, column): value
            for table, row in rows
            for column, value in row.items()
        }
        result = connection.execute(statement, parameters).one()
        return WrittenInstance(
            patient_pk=result.patient_pk,
            study_pk=result.study_pk,
            series_pk=result.series_pk,
            old_series_pk=result.old_series_pk,
            old_storage_key=result.old_storage_key,
            old_study_pk=result.old_study_pk,
            old_patient_pk=result.old_patient_pk,
        )


def _build_statement(
    patient_columns: Sequence[str],
    study_columns: Sequence[str],
    series_columns: Sequence[str],
    instance_columns: Sequence[str],
) -> Select[Any]:
    old_instance = (
        select(instances.c.series_pk, instances.c.storage_key)
        .where(instances.c.sop_instance_uid == _parameter(instances, "sop_instance_uid"))
        .with_for_update()
        .cte("old_instance")
    )
    # An aggregate reads all its input before it returns a row, so the
    # patient upsert, and every upsert after it, runs after the lock.
    instance_locked = select(func.count().label("rows")).select_from(old_instance).subquery()

    patient = _upsert(patients, "patient_key", patient_columns, instance_locked, {})
    study = _upsert(
        studies, "study_instance_uid", study_columns, patient, {"patient_pk": patient.c.pk}
    )
    written_series = _upsert(
        series, "series_instance_uid", series_columns, study, {"study_pk": study.c.pk}
    )
    instance = _upsert(
        instances,
        "sop_instance_uid",
        instance_columns,
        written_series,
        {"series_pk": written_series.c.pk},
    )

    old_study_pk = (
        select(series.c.study_pk)
        .where(series.c.series_instance_uid == _parameter(series, "series_instance_uid"))
        .scalar_subquery()
    )
    old_patient_pk = (
        select(studies.c.patient_pk)
        .where(studies.c.study_instance_uid == _parameter(studies, "study_instance_uid"))
        .scalar_subquery()
    )
    return select(
        patient.c.pk.label("patient_pk"),
        study.c.pk.label("study_pk"),
        written_series.c.pk.label("series_pk"),
        old_instance.c.series_pk.label("old_series_pk"),
        old_instance.c.storage_key.label("old_storage_key"),
        old_study_pk.label("old_study_pk"),
        old_patient_pk.label("old_patient_pk"),
    ).select_from(
        patient.join(study, true())
        .join(written_series, true())
        .join(instance, true())
        .outerjoin(old_instance, true())
    )


def _upsert(
    table: Table,
    key: str,
    columns: Sequence[str],
    source: FromClause,
    parent: Mapping[str, ColumnElement[Any]],
) -> CTE:
    """Return ``INSERT ... SELECT ... FROM source ON CONFLICT (key) DO UPDATE RETURNING pk``.

    ``columns`` are bound as parameters; ``parent`` maps the parent key
    column to the column of ``source`` that contains it.
    """
    names = [*columns, *parent]
    values = [_parameter(table, column) for column in columns]
    insert = postgresql.insert(table).from_select(
        names, select(*values, *parent.values()).select_from(source)
    )
    upsert = insert.on_conflict_do_update(
        index_elements=[key],
        set_={name: insert.excluded[name] for name in names if name != key},
    )
    return upsert.returning(table.c.pk).cte(f"{table.name}_written")


def _parameter(table: Table, column: str) -> Any:
    return bindparam(_parameter_name(table, column), type_=table.c[column].type)


def _parameter_name(table: Table, column: str) -> str:
    return f"{table.name}_{column}"
