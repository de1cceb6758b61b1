"""BulkUpsert writes the same rows as SQLAlchemy's own executemany, on both back-ends."""

from __future__ import annotations

import datetime

from sqlalchemy import Engine, select, text

from dicomvault.index.bulk_upsert import BulkUpsert
from dicomvault.index.schema import indexed_files

COLUMNS = ("path", "size", "mtime_ns", "mode", "outcome", "reason", "updated_at")
WRITTEN_AT = datetime.datetime(2026, 12, 5, 4, 30, 15, 123456, tzinfo=datetime.UTC)


def _row(path: str, size: int, outcome: str = "indexed") -> dict[str, object]:
    return {
        "path": path,
        "size": size,
        "mtime_ns": 1_700_000_000_123_456_789,
        "mode": "in_place",
        "outcome": outcome,
        "reason": "",
        "updated_at": WRITTEN_AT,
    }


def _stored(engine: Engine) -> dict[str, tuple[object, ...]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(*(indexed_files.c[name] for name in COLUMNS)).order_by(indexed_files.c.path)
        ).all()
    return {row.path: tuple(row) for row in rows}


def test_inserts_then_updates_on_the_key(migrated_engine: Engine) -> None:
    upsert = BulkUpsert(migrated_engine, indexed_files, "path", COLUMNS)
    with migrated_engine.begin() as connection:
        upsert.execute(connection, [_row("/a", 1), _row("/b", 2)])
    with migrated_engine.begin() as connection:
        upsert.execute(connection, [_row("/b", 20, "failed"), _row("/c", 3)])

    stored = _stored(migrated_engine)
    assert sorted(stored) == ["/a", "/b", "/c"]
    assert stored["/b"][1] == 20
    assert stored["/b"][4] == "failed"
    assert stored["/a"][2] == 1_700_000_000_123_456_789


def test_stores_what_sqlalchemy_stores(migrated_engine: Engine) -> None:
    """Dates go through the column type's conversion, so both paths read back alike."""
    upsert = BulkUpsert(migrated_engine, indexed_files, "path", COLUMNS)
    with migrated_engine.begin() as connection:
        upsert.execute(connection, [_row("/bulk", 1)])
        connection.execute(upsert.statement, [_row("/plain", 1)])

    stored = _stored(migrated_engine)
    assert stored["/bulk"][1:] == stored["/plain"][1:]
    with migrated_engine.connect() as connection:
        raw = connection.execute(
            text("SELECT path, CAST(updated_at AS TEXT) FROM indexed_files ORDER BY path")
        ).all()
    assert raw[0][1] == raw[1][1]


def test_no_rows_writes_nothing(migrated_engine: Engine) -> None:
    upsert = BulkUpsert(migrated_engine, indexed_files, "path", COLUMNS)
    with migrated_engine.begin() as connection:
        upsert.execute(connection, [])
    assert _stored(migrated_engine) == {}
