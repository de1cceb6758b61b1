"""Statements and round trips to the index database during one C-STORE.

The counts are taken on SQLite and on PostgreSQL; test_index_writer_postgres.py
has the tests of lost connections and concurrent writers. On PostgreSQL
each statement, each BEGIN and COMMIT that psycopg sends, and each
liveness check of a pooled connection is one round trip. SQLite runs in
the process, so there only the statements are counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import Engine, event

from dicomvault.archive import Archive
from dicomvault.dicom.header import describe_instance
from dicomvault.index.writer import StoredInstance
from tests.support.datasets import encode_dataset, make_instance


@dataclasses.dataclass
class DatabaseTraffic:
    """What an engine sent to its database while a block ran."""

    statements: list[str] = dataclasses.field(default_factory=list)
    begins: int = 0
    commits: int = 0
    pings: int = 0

    @property
    def round_trips(self) -> int:
        """Return the round trips to a PostgreSQL server, as psycopg 3 sends them."""
        return len(self.statements) + self.begins + self.commits + self.pings


@pytest.fixture
def traffic(
    migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[], DatabaseTraffic]]:
    """Return a function that starts counting the traffic of the index engine."""
    counted: list[DatabaseTraffic] = []

    def on_statement(*args: Any) -> None:
        counted[-1].statements.append(args[2])

    def on_begin(_connection: Any) -> None:
        counted[-1].begins += 1

    def on_commit(_connection: Any) -> None:
        counted[-1].commits += 1

    ping = migrated_engine.dialect.do_ping

    def counting_ping(dbapi_connection: Any) -> bool:
        if counted:
            counted[-1].pings += 1
        return ping(dbapi_connection)

    def start() -> DatabaseTraffic:
        counted.append(DatabaseTraffic())
        if len(counted) == 1:
            event.listen(migrated_engine, "before_cursor_execute", on_statement)
            event.listen(migrated_engine, "begin", on_begin)
            event.listen(migrated_engine, "commit", on_commit)
            monkeypatch.setattr(migrated_engine.dialect, "do_ping", counting_ping)
        return counted[-1]

    yield start
    if counted:
        event.remove(migrated_engine, "before_cursor_execute", on_statement)
        event.remove(migrated_engine, "begin", on_begin)
        event.remove(migrated_engine, "commit", on_commit)


def stored_instance(ds: Dataset, storage_key: str) -> StoredInstance:
    header = describe_instance(ds, ExplicitVRLittleEndian)
    return StoredInstance(header, storage_key, 1000, "CT01")


def store(archive: Archive, ds: Dataset) -> None:
    archive.store(encode_dataset(ds), ExplicitVRLittleEndian)


def other_instance_in_series(ds: Dataset) -> Dataset:
    return make_instance(
        StudyInstanceUID=ds.StudyInstanceUID, SeriesInstanceUID=ds.SeriesInstanceUID
    )


class TestStoreTraffic:
    # Each test counts its second store, because the first may open a connection.

    def test_new_instance(
        self, archive: Archive, traffic: Callable[[], DatabaseTraffic], index_backend: str
    ) -> None:
        first = make_instance()
        store(archive, first)

        counted = traffic()
        store(archive, other_instance_in_series(first))

        if index_backend == "postgres":
            assert counted.round_trips == 3, counted
            assert counted.pings == 0
            assert counted.begins == 1
            assert counted.commits == 1
            assert len(counted.statements) == 1, counted.statements
        else:
            # BEGIN IMMEDIATE, the 3 lookups and the 4 upserts.
            assert len(counted.statements) == 8, counted.statements

    def test_replacement(
        self, archive: Archive, traffic: Callable[[], DatabaseTraffic], index_backend: str
    ) -> None:
        ds = make_instance()
        store(archive, ds)

        counted = traffic()
        store(archive, ds)

        if index_backend == "postgres":
            assert counted.round_trips == 3, counted
            assert len(counted.statements) == 1, counted.statements
        else:
            assert len(counted.statements) == 8, counted.statements

    def test_replacement_moving_to_other_patient(
        self, archive: Archive, traffic: Callable[[], DatabaseTraffic], index_backend: str
    ) -> None:
        # The old series, study and patient are left empty and pruned: for
        # each, a lookup of its parent and a DELETE, and the patient's DELETE.
        ds = make_instance(PatientID="PAT-1")
        store(archive, ds)
        moved = make_instance(SOPInstanceUID=ds.SOPInstanceUID, PatientID="PAT-2")

        counted = traffic()
        store(archive, moved)

        if index_backend == "postgres":
            assert counted.round_trips == 3 + 5, counted
            assert len(counted.statements) == 1 + 5, counted.statements
        else:
            assert len(counted.statements) == 8 + 5, counted.statements
