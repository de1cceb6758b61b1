"""Fixtures shared by all test suites."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres import PostgresDatabases


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    """Create throw-away PostgreSQL databases on demand and drop them all at the end.

    Needs the cluster and role that tests/services.sh sets up. Call
    ``postgres_databases.create()`` for the URL of a new empty database.
    """
    databases = PostgresDatabases()
    yield databases
    databases.drop_all()


@pytest.fixture(scope="session")
def postgres_url(postgres_databases: PostgresDatabases) -> str:
    """URL of one empty PostgreSQL database for the whole session."""
    return postgres_databases.create()
