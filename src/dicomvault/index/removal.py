"""Remove studies, series or instances from the index."""

from __future__ import annotations

import dataclasses
import logging

from sqlalchemy import Engine, delete, select

from dicomvault.dicom.attributes import Level
from dicomvault.index.files import IndexedFiles
from dicomvault.index.schema import instances, series, studies
from dicomvault.index.writer import prune_empty_parents

LOGGER = logging.getLogger(__name__)


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
