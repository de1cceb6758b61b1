"""Open the index database: engine set-up for SQLite and PostgreSQL, and migrations."""

from __future__ import annotations

import json
import logging
import select
import threading
import weakref
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.pool import NullPool

from dicomvault.config import mask_url_password
from dicomvault.dicom.encoded_json import EncodedJSON

LOGGER = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Page cache per connection, in KiB. SQLite's default of 2 MiB is too small
# for the instance indexes during bulk inserts: with 16 MiB a batch insert of
# 4,000 instances took about 17 us per row instead of 25 us (2 cores, ext4).
# Pages are allocated as they are read, so a small index uses less.
SQLITE_CACHE_KIB = 16_384
# With SQLite's default of 1000 pages, every other commit of a 500-file
# indexing chunk copied the log into the database, and waited for the disk.
BULK_WRITER_CHECKPOINT_PAGES = 10_000
# Key of the PostgreSQL advisory lock held while the schema is migrated.
MIGRATION_LOCK_ID = 0x64766D67  # "dvmg"


class DatabaseError(RuntimeError):
    """The index database cannot be opened or migrated."""


def normalize_url(url: str) -> str:
    """Select the psycopg 3 driver for plain ``postgresql://`` URLs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


# libpq's TCP keepalives, unless the index URL sets them: an idle pooled
# connection whose network path was cut without a reset then errors after
# about a minute, and the check at checkout discards it.
POSTGRES_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def create_index_engine(url: str, bulk_writer: bool = False) -> Engine:
    """Create an engine for the index with the settings each back-end needs.

    SQLite runs in WAL mode with synchronous=FULL, so a committed transaction
    survives a power loss; writers take the database lock at BEGIN
    (``BEGIN IMMEDIATE``) when the connection has the ``write`` execution
    option, which avoids lock upgrade deadlocks between concurrent stores.

    A ``bulk_writer`` engine, used by indexing workers, runs SQLite with
    synchronous=NORMAL and checkpoints the write-ahead log rarely, so that
    its commits neither wait for the disk nor copy the log into the
    database. A power loss may then undo its last transactions, never
    corrupt the database. The next commit with synchronous=FULL by any
    process makes them durable, since it syncs the shared log: the indexing
    task saves its progress twice a second and its end that way, and
    checkpoints the log. PostgreSQL ignores the flag.

    Raises
    ------
    DatabaseError
        If the URL is malformed or names an unsupported database.
    """
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(f"Invalid index URL {mask_url_password(url)!r}: {exc}") from None

    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            poolclass=NullPool if parsed.database in (None, "", ":memory:") else None,
            json_serializer=serialize_json,
        )
        _configure_sqlite(engine, bulk_writer)
        return engine
    if parsed.get_backend_name() == "postgresql":
        # Without pool_pre_ping: its SELECT on every checkout was one round
        # trip in ten of a C-STORE. A pooled connection that the server has
        # closed is found by looking at its socket instead.
        engine = create_engine(
            url,
            pool_size=10,
            max_overflow=40,
            json_serializer=serialize_json,
            connect_args={
                name: value
                for name, value in POSTGRES_KEEPALIVES.items()
                if name not in parsed.query
            },
        )
        event.listen(engine, "checkout", _discard_closed_connection)
        return engine
    raise DatabaseError(
        f"Unsupported index database '{parsed.get_backend_name()}': use sqlite:///PATH or "
        "postgresql://USER:PASSWORD@HOST/DATABASE"
    )


def serialize_json(value: Any) -> str:
    """Encode a value for a JSON column; :class:`EncodedJSON` text is stored as it is."""
    if isinstance(value, EncodedJSON):
        return str(value)
    return json.dumps(value)


def _discard_closed_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Make the pool replace a checked out PostgreSQL connection that the server has closed.

    An idle connection has nothing to read. When PostgreSQL stops or
    restarts, or a backend is terminated, the server sends an error message
    and closes the socket, so the socket turns readable. Raising
    DisconnectionError makes the pool discard the connection and check out
    another one, without a round trip to the server.

    A connection that a network failure or a firewall cut without closing
    it gets a socket error once the TCP keepalives of
    :data:`POSTGRES_KEEPALIVES` have failed, about a minute after its last
    use, and poll() then reports it here.

    NOTE: no test cuts a network path, so that case is untested. Before the
    keepalives fail, the first statement fails and invalidates the pool.
    IndexWriter retries such a transaction on a new connection, and other
    callers fail once.
    """
    if dbapi_connection.closed:
        raise DisconnectionError("The index database connection is closed")
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLPRI)
    if poller.poll(0):
        LOGGER.info("Replacing an index database connection that the server closed")
        raise DisconnectionError("The index database server closed the connection")


def _configure_sqlite(engine: Engine, bulk_writer: bool) -> None:
    synchronous = "NORMAL" if bulk_writer else "FULL"
    # Pages of write-ahead log after which a commit copies the log into the
    # database; SQLite's default is 1000 (4 MiB).
    checkpoint_pages = BULK_WRITER_CHECKPOINT_PAGES if bulk_writer else 1000

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA wal_autocheckpoint={checkpoint_pages}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Any) -> None:
        if connection.get_execution_options().get("write"):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")


_WRITE_TURNS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_TURNS_LOCK = threading.Lock()


def write_turn(engine: Engine) -> AbstractContextManager[Any]:
    """Return the lock that this process's writers to a SQLite index take in turn.

    SQLite has one writer at a time. A thread that finds the database locked
    sleeps in SQLite's busy handler for 1 ms, then longer, so the writers of
    one process queue on this lock instead and start as soon as it is free.
    Every caller with the same engine gets the same lock. PostgreSQL needs
    none, so a context that does nothing is returned for it.
    """
    if engine.dialect.name != "sqlite":
        return nullcontext()
    with _TURNS_LOCK:
        return _WRITE_TURNS.setdefault(engine, threading.Lock())


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision with Alembic.

    Raises
    ------
    DatabaseError
        If the database is unreachable or a migration fails.
    """
    # Imported here: Alembic takes a tenth of a second to import, and an
    # index at the newest revision does not need it (see open_index_engine).
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    try:
        # On SQLite the write option takes the lock at BEGIN, so that two
        # processes opening a new index at once queue instead of one failing
        # with "database is locked" when its read transaction turns into a write.
        with (
            engine.connect().execution_options(write=True) as connection,
            connection.begin(),
        ):
            if engine.dialect.name == "postgresql":
                # Servers starting together on a new database take turns:
                # without it, the second failed creating a table that the
                # first had just created. Released at the commit.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except OperationalError as exc:
        raise DatabaseError(
            f"Cannot open the index database {mask_url_password(str(engine.url))}: {exc.orig}"
        ) from exc
    LOGGER.info(
        "Index database %s is at the newest schema revision",
        mask_url_password(engine.url.render_as_string(hide_password=True)),
    )


def open_index_engine(url: str) -> Engine:
    """Create the engine and migrate the schema; the one call ``serve`` makes.

    Raises
    ------
    DatabaseError
        If the database is unreachable or a migration fails.
    """
    engine = create_index_engine(url)
    if schema_revision(engine) != newest_revision():
        migrate(engine)
        return engine
    LOGGER.info(
        "Index database %s is at the newest schema revision",
        mask_url_password(engine.url.render_as_string(hide_password=True)),
    )
    return engine


def newest_revision() -> str:
    """Return the revision of the newest migration, the number its file name starts with."""
    return max(path.name.split("_")[0] for path in MIGRATIONS_DIR.glob("versions/[0-9]*_*.py"))


def schema_revision(engine: Engine) -> str | None:
    """Return the schema revision of the index, or None if it has none or cannot be read."""
    try:
        with engine.connect() as connection:
            revision = connection.exec_driver_sql(
                "SELECT version_num FROM alembic_version"
            ).scalar()
    except DBAPIError:
        return None  # a new database, or an unreachable one: migrate() reports which
    return None if revision is None else str(revision)
