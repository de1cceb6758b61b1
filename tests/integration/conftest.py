"""Fixtures for integration tests: dicomvault servers on loopback ports, per index back-end."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Generator, Iterator

import pytest

from tests.support.postgres import PostgresDatabases
from tests.support.server import LIVE_SERVERS, ServerFactory

DCMTK_TOOLS = ("echoscu", "storescu", "findscu")

INDEX_BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="session", autouse=True)
def dcmtk_tools() -> None:
    """Fail early with a clear message when the DCMTK tools are not installed."""
    missing = [tool for tool in DCMTK_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"DCMTK tools not found on PATH: {', '.join(missing)}. "
            "Run 'bash tests/services.sh' as root to install the dcmtk package."
        )


@pytest.fixture(scope="module", params=INDEX_BACKENDS)
def index_backend(request: pytest.FixtureRequest) -> str:
    """Name of the index back-end under test: "sqlite" or "postgres"."""
    backend: str = request.param
    return backend


def _index_url_source(backend: str, request: pytest.FixtureRequest) -> Callable[[], str]:
    # SQLite needs no URL: the server keeps its index under the data directory.
    if backend == "sqlite":
        return lambda: ""
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    return databases.create


@pytest.fixture
def index_url(index_backend: str, request: pytest.FixtureRequest) -> str:
    """The --index-url for this test: empty for SQLite, else a new PostgreSQL database."""
    return _index_url_source(index_backend, request)()


@pytest.fixture
def start_server(
    index_backend: str,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerFactory]:
    """Start dicomvault servers for one test; all are stopped when it ends.

    Each call starts ``python -m dicomvault serve`` on a free loopback port
    with a new data directory and, for PostgreSQL, a new database, and
    returns once the port accepts connections::

        server = start_server(config='[storage]\\nduplicate_policy = "reject"\\n')
        echoscu(server.port, server.ae_title)
    """
    factory = ServerFactory(
        lambda: tmp_path_factory.mktemp("server"),
        _index_url_source(index_backend, request),
    )
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def start_module_server(
    index_backend: str,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerFactory]:
    """Like start_server, for servers shared by the tests of one module."""
    factory = ServerFactory(
        lambda: tmp_path_factory.mktemp("server"),
        _index_url_source(index_backend, request),
    )
    yield factory
    factory.stop_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the log of every running server to the report of a failed test."""
    report = yield
    if report.failed:
        for server in LIVE_SERVERS:
            report.sections.append(
                (f"dicomvault server log (port {server.port})", server.describe())
            )
    return report
