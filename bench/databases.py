"""Create and drop throw-away PostgreSQL databases, for the benchmarks and the tests."""

from __future__ import annotations

import secrets
import time
from typing import Any

import psycopg
from psycopg import sql

# The role and cluster that tests/services.sh sets up.
DEFAULT_ADMIN_URL = "postgresql://dicomvault:dicomvault@127.0.0.1:5432/postgres"
DATABASE_PREFIX = "dicomvault_bench_"
DROP_ATTEMPTS = 20
DROP_RETRY_SECONDS = 0.5


def drop_database(connection: psycopg.Connection[Any], name: str) -> None:
    """Drop database ``name`` if it exists, closing the connections still open to it.

    ``connection`` must be in autocommit mode. ``WITH (FORCE)`` terminates
    the other connections, but a role that is not a superuser may not
    terminate an autovacuum worker in the database. Such a worker ends
    within moments, so the drop is tried again, up to DROP_ATTEMPTS times.

    Raises
    ------
    psycopg.errors.InsufficientPrivilege
        If an autovacuum worker stays in the database for every attempt.
    """
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    for attempt in range(1, DROP_ATTEMPTS + 1):
        try:
            connection.execute(statement)
            return
        except psycopg.errors.InsufficientPrivilege:
            if attempt == DROP_ATTEMPTS:
                raise
            time.sleep(DROP_RETRY_SECONDS)


class Postgres:
    """Throw-away databases, created through the admin URL and dropped at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.names: list[str] = []

    def create(self) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        name = DATABASE_PREFIX + secrets.token_hex(6)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.names.append(name)
        return self.url(name, "postgresql+psycopg")

    def url(self, name: str, scheme: str) -> str:
        """Return the URL of database ``name`` with ``scheme``."""
        base, _, _ = self.admin_url.rpartition("/")
        return f"{scheme}://{base.split('://', 1)[1]}/{name}"

    def drop_all(self) -> None:
        """Drop every database created so far.

        Raises
        ------
        psycopg.errors.InsufficientPrivilege
            If an autovacuum worker stays in a database for all the attempts.
        """
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            while self.names:
                drop_database(conn, self.names[-1])
                self.names.pop()
