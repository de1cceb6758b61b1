"""Fixtures shared by all test suites."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.moto import MotoServer, aws_test_environment, patched_environment
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


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """Run moto's S3-compatible server on a loopback port for the whole session.

    While it runs, the AWS variables of this process hold fake credentials
    and point to no profile or shared file, so nothing can reach AWS. Create
    a bucket per test or module with ``moto_server.new_bucket()``.
    """
    workdir = tmp_path_factory.mktemp("moto")
    with patched_environment(aws_test_environment(workdir)):
        server = MotoServer(workdir / "moto_server.log")
        server.start()
        try:
            yield server
        finally:
            server.stop()
