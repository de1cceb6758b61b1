"""Drop throw-away PostgreSQL databases, for the benchmarks and the tests."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql

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
