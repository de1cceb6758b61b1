"""The index writer on PostgreSQL: lost connections and concurrent replacements.

SQLite runs in the process and has one writer at a time, so neither case
exists there.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event

from dicomvault.archive import Archive
from dicomvault.index.database import create_index_engine
from dicomvault.index.writer import IndexOutcome, IndexWriter
from tests.support.datasets import make_instance
from tests.unit import test_index_writer_round_trips as round_trips
from tests.unit.test_index_writer_round_trips import (
    DatabaseTraffic,
    other_instance_in_series,
    store,
    stored_instance,
)

# The fixture that counts what reaches the database, shared with the module of the counts.
traffic = round_trips.traffic


@pytest.fixture(scope="module")
def index_backend() -> str:
    """PostgreSQL only: the cases need a database server and concurrent writers."""
    return "postgres"


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


@pytest.mark.postgres
class TestKeepalives:
    def parameters(self, url: str) -> dict[str, str]:
        engine = create_index_engine(url)
        try:
            with engine.connect() as connection:
                info = connection.connection.dbapi_connection.info
                parameters: dict[str, str] = info.get_parameters()
                return parameters
        finally:
            engine.dispose()

    def test_keepalives_on_by_default(self, migrated_engine: Engine) -> None:
        url = migrated_engine.url.render_as_string(hide_password=False)

        parameters = self.parameters(url)

        assert parameters["keepalives"] == "1"
        assert parameters["keepalives_idle"] == "30"
        assert parameters["keepalives_count"] == "3"

    def test_url_setting_wins(self, migrated_engine: Engine) -> None:
        url = migrated_engine.url.update_query_dict({"keepalives_idle": "5"})

        parameters = self.parameters(url.render_as_string(hide_password=False))

        assert parameters["keepalives_idle"] == "5"
        assert parameters["keepalives_interval"] == "10"
