"""Keep the Patient / Study / Series hierarchy free of parents without children."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, delete, exists, select

from dicomvault.index.schema import instances, patients, series, studies

# Storage keys per DELETE statement, well under SQLite's limit of bound parameters.
KEYS_PER_STATEMENT = 500


def remove_instances_stored_at(
    connection: Connection, storage_keys: Sequence[str]
) -> dict[str, str]:
    """Delete the instances stored under ``storage_keys`` and the parents left empty.

    Returns the SOP Instance UID of each deleted instance by its storage
    key. Runs in the caller's transaction.
    """
    removed: dict[str, str] = {}
    for start in range(0, len(storage_keys), KEYS_PER_STATEMENT):
        keys = storage_keys[start : start + KEYS_PER_STATEMENT]
        rows = connection.execute(
            select(
                instances.c.pk,
                instances.c.series_pk,
                instances.c.storage_key,
                instances.c.sop_instance_uid,
            ).where(instances.c.storage_key.in_(keys))
        ).all()
        if rows:
            connection.execute(delete(instances).where(instances.c.pk.in_([r.pk for r in rows])))
            prune_empty_parents(connection, {r.series_pk for r in rows})
        removed.update((r.storage_key, r.sop_instance_uid) for r in rows)
    return removed


def prune_empty_parents(connection: Connection, series_pks: Iterable[int]) -> None:
    """Delete the series left without instances, then studies and patients left empty."""
    for series_pk in series_pks:
        prune_series(connection, series_pk)


def prune_series(connection: Connection, series_pk: int) -> None:
    """Delete the series if it has no instances, then its study and patient if left empty."""
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
        prune_study(connection, study_pk)


def prune_study(connection: Connection, study_pk: int) -> None:
    """Delete the study if it has no series, then its patient if left empty."""
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
        prune_patient(connection, patient_pk)


def prune_patient(connection: Connection, patient_pk: int) -> None:
    """Delete the patient if it has no studies."""
    connection.execute(
        delete(patients).where(
            patients.c.pk == patient_pk,
            ~exists().where(studies.c.patient_pk == patient_pk),
        )
    )
