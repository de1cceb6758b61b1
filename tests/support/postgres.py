"""Throw-away PostgreSQL databases for the tests.

tests/services.sh starts the PostgreSQL 15 cluster and creates the login role
used here. Each database created through :class:`PostgresDatabases` is owned by
that role and dropped by :meth:`PostgresDatabases.drop_all`.
"""

from __future__ import annotations

import secrets

import psycopg
from bench.databases import drop_database
from psycopg import sql

HOST = "127.0.0.1"
PORT = 5432
ROLE = "dicomvault"
PASSWORD = "dicomvault"
DATABASE_PREFIX = "dicomvault_test_"
CONNECT_TIMEOUT_SECONDS = 10


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
                drop_database(conn, name)

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
