"""Statements and round trips to the index database during one C-STORE.

The counts are taken on SQLite and on PostgreSQL, and the tests of lost
connections and concurrent writers run on PostgreSQL only. On PostgreSQL
each statement, each BEGIN and COMMIT that psycopg sends, and each
liveness check of a pooled connection is one round trip. SQLite runs in
the process, so there only the statements are counted.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import Engine, event

from dicomvault.archive import Archive
from dicomvault.dicom.header import describe_instance
from dicomvault.index.writer import IndexOutcome, IndexWriter, StoredInstance
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


def terminate_backends(engine: Engine, pids: list[int]) -> None:
    """Terminate PostgreSQL backends from a connection outside the engine's pool."""
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as admin:
        for pid in pids:
            # Waits up to 10 s for the backend to exit, so that its socket is closed.
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))


def pooled_backends(engine: Engine) -> list[int]:
    """Return the backend process ids of every other connection to the engine's database."""
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        ).fetchall()
    return [int(row[0]) for row in rows]


@pytest.mark.postgres
class TestLostConnection:
    @pytest.fixture(autouse=True)
    def _postgres_only(self, index_backend: str) -> None:
        if index_backend != "postgres":
            pytest.skip("SQLite has no server connection to lose")

    def test_closed_pooled_connection_replaced(
        self,
        archive: Archive,
        migrated_engine: Engine,
        traffic: Callable[[], DatabaseTraffic],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        first = make_instance()
        store(archive, first)
        backends = pooled_backends(migrated_engine)
        assert backends
        terminate_backends(migrated_engine, backends)

        counted = traffic()
        with caplog.at_level(logging.INFO, logger="dicomvault.index.database"):
            store(archive, other_instance_in_series(first))

        assert counted.pings == 0
        assert len(counted.statements) == 1, counted.statements
        assert "Replacing an index database connection that the server closed" in caplog.messages
        assert archive.writer.instance_exists(first.SOPInstanceUID)

    def test_connection_lost_in_transaction_retried(
        self, archive: Archive, migrated_engine: Engine, traffic: Callable[[], DatabaseTraffic]
    ) -> None:
        store(archive, make_instance())
        terminated: list[int] = []

        def terminate_once(connection: Any, *_args: Any) -> None:
            if not terminated:
                pid = connection.connection.dbapi_connection.info.backend_pid
                terminated.append(pid)
                terminate_backends(migrated_engine, [pid])

        counted = traffic()
        event.listen(migrated_engine, "before_cursor_execute", terminate_once)
        try:
            ds = make_instance()
            store(archive, ds)
        finally:
            event.remove(migrated_engine, "before_cursor_execute", terminate_once)

        assert len(terminated) == 1
        # The statement sent to the terminated backend, then the retry.
        assert len(counted.statements) == 2, counted.statements
        assert archive.writer.instance_exists(ds.SOPInstanceUID)


LOCK_WAIT_TIMEOUT_SECONDS = 30


def wait_for_lock_wait(engine: Engine) -> None:
    """Poll until a backend of the engine's database waits for a row lock."""
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    deadline = time.monotonic() + LOCK_WAIT_TIMEOUT_SECONDS
    with psycopg.connect(url, autocommit=True) as admin:
        while time.monotonic() < deadline:
            waiting = admin.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            if waiting is not None and waiting[0] > 0:
                return
            time.sleep(0.01)
    raise AssertionError(f"No backend waited for a lock within {LOCK_WAIT_TIMEOUT_SECONDS} s")


@pytest.mark.postgres
class TestConcurrentReplacement:
    @pytest.fixture(autouse=True)
    def _postgres_only(self, index_backend: str) -> None:
        if index_backend != "postgres":
            pytest.skip("SQLite runs one writer at a time")

    def test_waits_and_names_newest_key(self, migrated_engine: Engine) -> None:
        # The statement's snapshot is older than the replacement it waited
        # for; the row lock still returns the key that replacement wrote.
        writer = IndexWriter(migrated_engine)
        ds = make_instance()
        writer.add_instance(stored_instance(ds, "aa/bb/first.dcm"))

        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            with migrated_engine.connect() as connection, connection.begin():
                writer._add_instance(connection, stored_instance(ds, "aa/bb/second.dcm"), True)
                later = pool.submit(writer.add_instance, stored_instance(ds, "aa/bb/third.dcm"))
                wait_for_lock_wait(migrated_engine)
            outcome = later.result(timeout=LOCK_WAIT_TIMEOUT_SECONDS)

        assert outcome == IndexOutcome(replaced=True, replaced_storage_key="aa/bb/second.dcm")
