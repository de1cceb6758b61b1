"""Throw-away PostgreSQL databases for the tests.

tests/services.sh starts the PostgreSQL 15 cluster and creates the login role
used here. Each database created through :class:`PostgresDatabases` is owned by
that role and dropped by :meth:`PostgresDatabases.drop_all`.
"""

from __future__ import annotations

import secrets
import time

import psycopg
from psycopg import sql

HOST = "127.0.0.1"
PORT = 5432
ROLE = "dicomvault"
PASSWORD = "dicomvault"
DATABASE_PREFIX = "dicomvault_test_"
CONNECT_TIMEOUT_SECONDS = 10
DROP_ATTEMPTS = 20
DROP_RETRY_SECONDS = 0.5


class PostgresDatabases:
    """Creates databases named dicomvault_test_<random> and drops them later."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def create(self) -> str:
        """Create an empty database and return its SQLAlchemy URL for the server."""
        name = DATABASE_PREFIX + secrets.token_hex(6)
        with self._connect() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(ROLE)
                )
            )
        self.names.append(name)
        return f"postgresql+psycopg://{ROLE}:{PASSWORD}@{HOST}:{PORT}/{name}"

    def drop_all(self) -> None:
        """Drop every database created so far, closing connections still open to it."""
        with self._connect() as conn:
            while self.names:
                name = self.names.pop()
                statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
                # FORCE must terminate every other connection, and the test role may
                # not terminate an autovacuum worker (owned by the superuser) that
                # happens to be in the database. Such a worker ends within moments.
                for attempt in range(1, DROP_ATTEMPTS + 1):
                    try:
                        conn.execute(statement)
                        break
                    except psycopg.errors.InsufficientPrivilege:
                        if attempt == DROP_ATTEMPTS:
                            raise
                        time.sleep(DROP_RETRY_SECONDS)

    @staticmethod
    def _connect() -> psycopg.Connection[tuple[object, ...]]:
        try:
            return psycopg.connect(
                host=HOST,
                port=PORT,
                user=ROLE,
                password=PASSWORD,
                dbname="postgres",
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
            )
        except psycopg.OperationalError as exc:
            raise RuntimeError(
                f"Cannot connect to PostgreSQL at {HOST}:{PORT} as role '{ROLE}': {exc}. "
                "Run 'bash tests/services.sh' as root to start it and create the role."
            ) from exc
