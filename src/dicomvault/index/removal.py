"""Remove studies, series or instances from the index."""

from __future__ import annotations

import dataclasses
import logging

from sqlalchemy import Engine, case, delete, func, or_, select

from dicomvault.dicom.attributes import Level
from dicomvault.index.files import IndexedFiles
from dicomvault.index.hierarchy import prune_empty_parents
from dicomvault.index.schema import instances, patients, series, studies
from dicomvault.storage.in_bucket import IN_BUCKET_PREFIX
from dicomvault.storage.in_place import IN_PLACE_PREFIX

LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RemovalPreview:
    """Summary of a study, or one of its series, before removal, for a confirmation step.

    ``modality`` and ``series_description`` are empty for a whole study.
    """

    patient_id: str
    patient_name: str
    study_instance_uid: str
    study_date: str
    study_description: str
    series_instance_uid: str
    modality: str
    series_description: str
    instances: int
    in_place_instances: int


@dataclasses.dataclass(frozen=True)
class RemovedInstance:
    """An instance removed from the index, and the storage key of its file."""

    sop_instance_uid: str
    storage_key: str


def remove_from_index(engine: Engine, level: Level, uid: str) -> list[RemovedInstance]:
    """Remove the instances of a study, a series or one instance, in one transaction.

    Series, studies and patients left without instances are removed too, and
    so are the remembered states of the files the instances came from, so
    that indexing their folder again adds them back. Files are not touched.

    Returns
    -------
    list of RemovedInstance
        The instances removed; empty if no entity has this UID.

    Raises
    ------
    ValueError
        If ``level`` is PATIENT: patients have no UID.
    sqlalchemy.exc.SQLAlchemyError
        If the database fails; nothing is removed then.
    """
    statement = select(
        instances.c.pk, instances.c.series_pk, instances.c.sop_instance_uid, instances.c.storage_key
    )
    if level is Level.STUDY:
        statement = (
            statement.join(series, instances.c.series_pk == series.c.pk)
            .join(studies, series.c.study_pk == studies.c.pk)
            .where(studies.c.study_instance_uid == uid)
        )
    elif level is Level.SERIES:
        statement = statement.join(series, instances.c.series_pk == series.c.pk).where(
            series.c.series_instance_uid == uid
        )
    elif level is Level.IMAGE:
        statement = statement.where(instances.c.sop_instance_uid == uid)
    else:
        raise ValueError(f"Cannot remove by {level.name}: give a study, series or instance UID")

    with engine.connect().execution_options(write=True) as connection, connection.begin():
        rows = connection.execute(statement.with_for_update()).all()
        pks = [row.pk for row in rows]
        for start in range(0, len(pks), 500):
            connection.execute(
                delete(instances).where(instances.c.pk.in_(pks[start : start + 500]))
            )
        prune_empty_parents(connection, {row.series_pk for row in rows})
        IndexedFiles(engine).forget_instances(connection, [row.sop_instance_uid for row in rows])
    LOGGER.info("Removed %d instances of %s %s from the index", len(rows), level.name, uid)
    return [RemovedInstance(row.sop_instance_uid, row.storage_key) for row in rows]


def study_of_series(engine: Engine, series_instance_uid: str) -> str | None:
    """Return the Study Instance UID of the indexed series, or None if it is not indexed."""
    statement = (
        select(studies.c.study_instance_uid)
        .join(series, series.c.study_pk == studies.c.pk)
        .where(series.c.series_instance_uid == series_instance_uid)
    )
    with engine.connect() as connection:
        uid: str | None = connection.execute(statement).scalar_one_or_none()
    return uid


def preview_removal(
    engine: Engine, study_instance_uid: str, series_instance_uid: str = ""
) -> RemovalPreview | None:
    """Describe the study, or its series ``series_instance_uid``, with its instance counts.

    Returns None when the study is not indexed, or the series is not
    indexed in that study.
    """
    in_place = or_(
        instances.c.storage_key.startswith(IN_PLACE_PREFIX),
        instances.c.storage_key.startswith(IN_BUCKET_PREFIX),
    )
    statement = (
        select(
            patients.c.patient_id,
            patients.c.patient_name,
            studies.c.study_date,
            studies.c.study_description,
            func.count(instances.c.pk).label("instances"),
            func.coalesce(func.sum(case((in_place, 1), else_=0)), 0).label("in_place"),
        )
        .select_from(studies)
        .join(patients, studies.c.patient_pk == patients.c.pk)
        .join(series, series.c.study_pk == studies.c.pk)
        .join(instances, instances.c.series_pk == series.c.pk)
        .where(studies.c.study_instance_uid == study_instance_uid)
        .group_by(
            patients.c.patient_id,
            patients.c.patient_name,
            studies.c.study_date,
            studies.c.study_description,
        )
    )
    if series_instance_uid:
        statement = statement.add_columns(series.c.modality, series.c.series_description)
        statement = statement.where(series.c.series_instance_uid == series_instance_uid)
        statement = statement.group_by(series.c.modality, series.c.series_description)
    with engine.connect() as connection:
        row = connection.execute(statement).first()
    if row is None:
        return None
    return RemovalPreview(
        patient_id=row.patient_id,
        patient_name=row.patient_name,
        study_instance_uid=study_instance_uid,
        study_date=row.study_date,
        study_description=row.study_description,
        series_instance_uid=series_instance_uid,
        modality=row.modality if series_instance_uid else "",
        series_description=row.series_description if series_instance_uid else "",
        instances=int(row.instances),
        in_place_instances=int(row.in_place),
    )
