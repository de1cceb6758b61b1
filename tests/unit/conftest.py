"""Fixtures for unit tests of the index and the archive, on SQLite and PostgreSQL.

Each test module runs once per index back-end. PostgreSQL needs the server
that tests/services.sh starts. A new PostgreSQL database per test would
dominate the run time, so tests share one migrated database per module and
start from empty tables. Only migration tests get a new database each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from dicomvault.archive import Archive
from dicomvault.config import load_settings
from dicomvault.index.database import create_index_engine, open_index_engine
from dicomvault.index.schema import METADATA
from dicomvault.index.users import UserStore
from dicomvault.ingest.manager import TaskManager
from dicomvault.ingest.pool import ReaderPool
from dicomvault.storage.filesystem import FilesystemStorage
from dicomvault.users import Role
from dicomvault.web.app import create_app
from dicomvault.web.server import HttpServer
from tests.support.network import LOOPBACK, free_port
from tests.support.postgres import PostgresDatabases

INDEX_BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="module", params=INDEX_BACKENDS)
def index_backend(request: pytest.FixtureRequest) -> str:
    """Name of the index back-end under test: "sqlite" or "postgres"."""
    backend: str = request.param
    return backend


@pytest.fixture(scope="module")
def new_index_url(
    index_backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[], str]:
    """Return a function that creates an empty index database and returns its URL."""
    if index_backend == "sqlite":
        return lambda: f"sqlite:///{tmp_path_factory.mktemp('index') / 'index.sqlite'}"
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    return databases.create


@pytest.fixture
def index_url(new_index_url: Callable[[], str]) -> str:
    """URL of a new empty index database without tables."""
    return new_index_url()


@pytest.fixture
def index_engine(index_url: str) -> Iterator[Engine]:
    """An engine on a new empty database, not migrated yet."""
    engine = create_index_engine(index_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def module_engine(new_index_url: Callable[[], str]) -> Iterator[Engine]:
    """An engine on a migrated index database shared by the tests of one module."""
    engine = open_index_engine(new_index_url())
    yield engine
    engine.dispose()


@pytest.fixture
def migrated_engine(module_engine: Engine) -> Engine:
    """The module's migrated index database with every table emptied."""
    with module_engine.begin() as connection:
        for table in reversed(METADATA.sorted_tables):
            connection.execute(table.delete())
    return module_engine


def build_archive(data_dir: Path, engine: Engine, **overrides: Any) -> Archive:
    """Build an archive over ``engine`` with files under ``data_dir``/storage.

    ``overrides`` are settings by dotted name with '.' written as '__', such
    as ``storage__duplicate_policy="reject"``.
    """
    options = {name.replace("__", "."): value for name, value in overrides.items()}
    settings = load_settings(
        environ={},
        overrides={
            "storage.data_dir": str(data_dir),
            "index.url": engine.url.render_as_string(hide_password=False),
            **options,
        },
    )
    return Archive(settings, engine, FilesystemStorage(data_dir / "storage"))


@pytest.fixture
def make_archive(tmp_path: Path, migrated_engine: Engine) -> Callable[..., Archive]:
    """Return a factory of archives over one emptied index and one storage folder.

    Keyword arguments are settings as in :func:`build_archive`.
    """

    def factory(**overrides: Any) -> Archive:
        return build_archive(tmp_path, migrated_engine, **overrides)

    return factory


@pytest.fixture
def archive(make_archive: Callable[..., Archive]) -> Archive:
    """An archive with the default settings over an empty index and storage."""
    return make_archive()


@pytest.fixture(scope="module")
def make_module_archive(
    new_index_url: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], Archive]]:
    """Return a factory of archives, each over its own new index, kept for the module.

    For read-only tests that search one set of stored instances.
    """
    engines: list[Engine] = []

    def factory() -> Archive:
        engine = open_index_engine(new_index_url())
        engines.append(engine)
        return build_archive(tmp_path_factory.mktemp("archive"), engine)

    yield factory
    for engine in engines:
        engine.dispose()


# --- the HTTP application on a loopback port (test_web_tasks, test_web_auth) -------------

WEB_TIMEOUT_SECONDS = 30
ADMIN_PASSWORD = "admin password for tests"


@pytest.fixture(scope="module")
def pool() -> Iterator[ReaderPool]:
    reader_pool = ReaderPool(1)
    yield reader_pool
    reader_pool.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    return folder


@pytest.fixture
def manager(
    tmp_path: Path, root: Path, migrated_engine: Engine, pool: ReaderPool
) -> Iterator[TaskManager]:
    from tests.unit.test_ingest_indexer import make_context

    context = make_context(
        tmp_path / "data",
        migrated_engine,
        pool,
        ingest__import_roots=[str(root)],
        ingest__settle_seconds=5.0,
    )
    task_manager = TaskManager(context)
    task_manager.start()
    yield task_manager
    task_manager.stop(WEB_TIMEOUT_SECONDS)


@pytest.fixture
def server_url(manager: TaskManager) -> Iterator[str]:
    """Serve the application on a loopback port; yield its base URL."""
    context = manager.context
    archive = Archive(context.settings, context.engine, context.storage)
    server = HttpServer(create_app(manager, archive), LOOPBACK, free_port())
    server.start()
    yield f"http://{LOOPBACK}:{server.port}"
    server.stop()


@pytest.fixture
def admin_token(migrated_engine: Engine) -> str:
    """Create the user "admin" with the admin role; return an API token of theirs."""
    store = UserStore(migrated_engine)
    admin = store.add("admin", Role.ADMIN, ADMIN_PASSWORD)
    return store.create_token(admin, "tests")[1]


@pytest.fixture
def client(server_url: str, admin_token: str) -> Iterator[httpx.Client]:
    """An HTTP client that sends the admin's API token."""
    with httpx.Client(
        base_url=server_url,
        timeout=WEB_TIMEOUT_SECONDS,
        headers={"Authorization": f"Bearer {admin_token}"},
    ) as http_client:
        yield http_client
