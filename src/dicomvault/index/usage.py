"""Count the entities in the index and add up the sizes of their files."""

from __future__ import annotations

import dataclasses

from sqlalchemy import Engine, case, func, or_, select

from dicomvault.index.schema import instances, patients, series, studies
from dicomvault.storage.in_bucket import IN_BUCKET_PREFIX
from dicomvault.storage.in_place import IN_PLACE_PREFIX


@dataclasses.dataclass(frozen=True)
class IndexUsage:
    """Entities in the index and the sizes of their files, in bytes.

    ``stored_*`` counts files in the archive's storage (received or
    imported); ``in_place_*`` counts files and bucket objects indexed
    where they are.
    """

    patients: int
    studies: int
    series: int
    instances: int
    stored_instances: int
    stored_bytes: int
    in_place_instances: int
    in_place_bytes: int


def count_usage(engine: Engine) -> IndexUsage:
    """Count the entities of each level and add up the file sizes.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        If the database fails.
    """
    in_place = or_(
        instances.c.storage_key.startswith(IN_PLACE_PREFIX),
        instances.c.storage_key.startswith(IN_BUCKET_PREFIX),
    )
    with engine.connect() as connection:
        entity_counts = [
            connection.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (patients, studies, series)
        ]
        row = connection.execute(
            select(
                func.count(),
                func.coalesce(func.sum(case((in_place, 0), else_=1)), 0),
                func.coalesce(func.sum(case((in_place, 0), else_=instances.c.size)), 0),
                func.coalesce(func.sum(case((in_place, instances.c.size), else_=0)), 0),
            ).select_from(instances)
        ).one()
    total, stored, stored_bytes, in_place_bytes = (int(value) for value in row)
    return IndexUsage(
        patients=int(entity_counts[0]),
        studies=int(entity_counts[1]),
        series=int(entity_counts[2]),
        instances=total,
        stored_instances=stored,
        stored_bytes=stored_bytes,
        in_place_instances=total - stored,
        in_place_bytes=in_place_bytes,
    )
