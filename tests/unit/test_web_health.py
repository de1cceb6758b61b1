"""/health, /ready and /metrics on the HTTP application, and the HTTP server's drain."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import Engine, create_engine

from dicomvault.archive import Archive
from dicomvault.index.users import UserStore
from dicomvault.ingest.manager import TaskManager
from dicomvault.readiness import ReadinessChecker
from dicomvault.users import Role
from dicomvault.web.app import create_app
from dicomvault.web.server import HttpServer, SuccessfulProbeFilter
from tests.support.datasets import encode_dataset, make_instance
from tests.support.network import LOOPBACK, free_port, port_accepts_connections
from tests.unit.conftest import WEB_TIMEOUT_SECONDS

READINESS_TIMEOUT_SECONDS = 0.5


@pytest.fixture(scope="module")
def index_backend() -> str:
    """These tests exercise HTTP routes; the readiness query runs on SQLite in test_readiness."""
    return "sqlite"


@pytest.fixture
def serve() -> Iterator[Callable[[FastAPI], httpx.Client]]:
    """Return a function that serves an application on loopback and returns a client for it."""
    servers: list[HttpServer] = []
    clients: list[httpx.Client] = []

    def start(app: FastAPI) -> httpx.Client:
        server = HttpServer(app, LOOPBACK, free_port())
        server.start()
        servers.append(server)
        client = httpx.Client(
            base_url=f"http://{LOOPBACK}:{server.port}", timeout=WEB_TIMEOUT_SECONDS
        )
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()
    for server in servers:
        server.stop()


def with_metrics_access(archive: Archive, access: str) -> Archive:
    http = dataclasses.replace(archive.settings.http, metrics_access=access)
    archive.settings = dataclasses.replace(archive.settings, http=http)
    return archive


def user_token(engine: Engine) -> str:
    store = UserStore(engine)
    viewer = store.add("viewer", Role.USER, "viewer password for tests")
    return store.create_token(viewer, "prometheus")[1]


class TestHealth:
    def test_get(self, serve: Callable[[FastAPI], httpx.Client], manager: TaskManager) -> None:
        archive = Archive(manager.context.settings, manager.context.engine, manager.context.storage)
        client = serve(create_app(manager, archive))

        response = client.get("/health")

        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    def test_head(self, serve: Callable[[FastAPI], httpx.Client], manager: TaskManager) -> None:
        archive = Archive(manager.context.settings, manager.context.engine, manager.context.storage)
        client = serve(create_app(manager, archive))

        response = client.head("/health")

        assert response.status_code == 200
        assert response.content == b""


class TestReady:
    def test_ready(self, serve: Callable[[FastAPI], httpx.Client], manager: TaskManager) -> None:
        archive = Archive(manager.context.settings, manager.context.engine, manager.context.storage)
        client = serve(create_app(manager, archive))

        response = client.get("/ready")

        assert response.status_code == 200
        assert response.json() == {"status": "ready", "checks": {"database": "ok", "storage": "ok"}}
        assert response.headers["cache-control"] == "no-store"

    def test_database_down(
        self, serve: Callable[[FastAPI], httpx.Client], manager: TaskManager, tmp_path: Path
    ) -> None:
        archive = Archive(manager.context.settings, manager.context.engine, manager.context.storage)
        missing = tmp_path / "missing" / "index.sqlite"
        unreachable = create_engine(f"sqlite:///{missing}")
        checker = ReadinessChecker(unreachable, archive.storage, READINESS_TIMEOUT_SECONDS)
        client = serve(create_app(manager, archive, readiness=checker))

        response = client.get("/ready")
        unreachable.dispose()

        assert response.status_code == 503
        assert response.json() == {
            "status": "not ready",
            "checks": {"database": "failed", "storage": "ok"},
        }
        assert str(missing) not in response.text

    def test_draining(self, serve: Callable[[FastAPI], httpx.Client], manager: TaskManager) -> None:
        archive = Archive(manager.context.settings, manager.context.engine, manager.context.storage)
        app = create_app(manager, archive)
        client = serve(app)

        app.state.readiness.start_draining()
        response = client.get("/ready")

        assert response.status_code == 503
        assert response.json() == {"status": "draining", "checks": {}}


class TestMetricsAccess:
    def test_users_by_default(
        self, serve: Callable[[FastAPI], httpx.Client], manager: TaskManager
    ) -> None:
        archive = Archive(manager.context.settings, manager.context.engine, manager.context.storage)
        client = serve(create_app(manager, archive))
        token = user_token(archive.engine)

        anonymous = client.get("/metrics")
        with_token = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})

        assert archive.settings.http.metrics_access == "users"
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert with_token.status_code == 200
        assert with_token.headers["content-type"].startswith("text/plain; version=")

    def test_open(self, serve: Callable[[FastAPI], httpx.Client], manager: TaskManager) -> None:
        archive = Archive(manager.context.settings, manager.context.engine, manager.context.storage)
        client = serve(create_app(manager, with_metrics_access(archive, "open")))

        response = client.get("/metrics")

        assert response.status_code == 200
        assert "dicomvault_build_info" in response.text

    def test_openmetrics_negotiated(
        self, serve: Callable[[FastAPI], httpx.Client], manager: TaskManager
    ) -> None:
        archive = Archive(manager.context.settings, manager.context.engine, manager.context.storage)
        client = serve(create_app(manager, with_metrics_access(archive, "open")))

        response = client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/openmetrics-text")
        assert response.text.endswith("# EOF\n")


class TestMetricsContent:
    @pytest.fixture
    def client(
        self, serve: Callable[[FastAPI], httpx.Client], manager: TaskManager
    ) -> httpx.Client:
        archive = Archive(manager.context.settings, manager.context.engine, manager.context.storage)
        client = serve(create_app(manager, with_metrics_access(archive, "open")))
        archive.store(encode_dataset(make_instance()), ExplicitVRLittleEndian, service="STOW-RS")
        return client

    def test_store_counted(self, client: httpx.Client) -> None:
        text = client.get("/metrics").text

        assert 'dicomvault_instances_stored_total{service="STOW-RS"} 1.0' in text

    def test_qido_counted(self, client: httpx.Client) -> None:
        assert client.get("/dicomweb/studies").status_code == 200

        text = client.get("/metrics").text

        assert 'dicomvault_queries_total{level="STUDY",service="QIDO-RS"} 1.0' in text
        assert 'dicomvault_query_matches_total{service="QIDO-RS"} 1.0' in text
        labels = 'method="GET",route="/dicomweb/studies",status="200"'
        assert f"dicomvault_http_requests_total{{{labels}}} 1.0" in text

    def test_route_template_with_parameters(self, client: httpx.Client) -> None:
        client.get("/dicomweb/studies/1.2.3.999/series")

        text = client.get("/metrics").text

        assert 'route="/dicomweb/studies/{study}/series",status="204"' in text
        assert "1.2.3.999" not in text

    def test_unmatched_route(self, client: httpx.Client) -> None:
        client.get("/no/such/page/12345")

        text = client.get("/metrics").text

        assert 'route="unmatched",status="404"' in text
        assert "12345" not in text


class TestProbeAccessLog:
    @pytest.mark.parametrize(
        ("method", "path", "status", "logged"),
        [
            pytest.param("GET", "/ready", 200, False, id="ready-200"),
            pytest.param("HEAD", "/health", 200, False, id="health-head"),
            pytest.param("GET", "/ready", 503, True, id="ready-503"),
            pytest.param("GET", "/metrics", 200, True, id="metrics"),
            pytest.param("POST", "/ready", 405, True, id="post"),
        ],
    )
    def test_filter(self, method: str, path: str, status: int, logged: bool) -> None:
        record = logging.LogRecord(
            "uvicorn.access",
            logging.INFO,
            __file__,
            1,
            '%s - "%s %s HTTP/%s" %d',
            ("127.0.0.1:5000", method, path, "1.1", status),
            None,
        )

        assert SuccessfulProbeFilter().filter(record) is logged


class TestHttpDrain:
    @pytest.fixture
    def slow_app(self) -> tuple[FastAPI, threading.Event, threading.Event]:
        """Return an application whose /slow responds once ``release`` is set.

        ``entered`` is set when /slow is called.
        """
        app = FastAPI()
        entered = threading.Event()
        release = threading.Event()

        @app.get("/slow")
        def slow() -> dict[str, str]:
            entered.set()
            release.wait(WEB_TIMEOUT_SECONDS)
            return {"status": "done"}

        return app, entered, release

    def test_request_in_flight_finishes(
        self, slow_app: tuple[FastAPI, threading.Event, threading.Event]
    ) -> None:
        app, entered, release = slow_app
        server = HttpServer(app, LOOPBACK, free_port(), shutdown_timeout=10)
        server.start()
        responses: list[httpx.Response] = []
        request = threading.Thread(
            target=lambda: responses.append(
                httpx.get(f"http://{LOOPBACK}:{server.port}/slow", timeout=WEB_TIMEOUT_SECONDS)
            )
        )
        request.start()
        assert entered.wait(WEB_TIMEOUT_SECONDS)

        server.stop_accepting()
        deadline = time.monotonic() + 5
        while port_accepts_connections(server.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = not port_accepts_connections(server.port)
        release.set()
        server.stop()
        request.join(WEB_TIMEOUT_SECONDS)

        assert refused, "the port still accepts connections after stop_accepting()"
        assert [response.status_code for response in responses] == [200]
        assert responses[0].json() == {"status": "done"}

    def test_abort_ends_wait(
        self, slow_app: tuple[FastAPI, threading.Event, threading.Event]
    ) -> None:
        app, entered, release = slow_app
        server = HttpServer(app, LOOPBACK, free_port(), shutdown_timeout=30)
        server.start()
        request = threading.Thread(
            target=lambda: httpx.get(f"http://{LOOPBACK}:{server.port}/slow", timeout=5),
            daemon=True,
        )
        request.start()
        assert entered.wait(WEB_TIMEOUT_SECONDS)
        abort = threading.Event()
        abort.set()

        started = time.monotonic()
        server.stop(abort=abort)
        elapsed = time.monotonic() - started
        release.set()
        request.join(WEB_TIMEOUT_SECONDS)

        assert elapsed < 5
