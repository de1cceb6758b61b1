"""HTTP request limits: body size (413), concurrency (503), stalled clients (408, closed)."""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi import FastAPI, Request

from dicomvault.archive import Archive
from dicomvault.web.app import create_app
from dicomvault.web.limits import RequestLimitsMiddleware
from dicomvault.web.server import HttpServer
from tests.support.network import LOOPBACK, free_port, wait_until

MAX_REQUEST_SIZE = 1000
MAX_CONCURRENT_REQUESTS = 2
READ_TIMEOUT_SECONDS = 1.0
# Each wait is bounded: a server that ignores a limit fails the test in seconds.
WAIT_SECONDS = 5.0
TOO_LARGE_DETAIL = (
    "The request body exceeds 1000 bytes, the limit set by http.max_request_size; "
    "send a smaller request"
)


def limited_app(gate: threading.Event, entered: threading.Semaphore) -> FastAPI:
    """An application with a body-reading endpoint, a STOW-RS path and a held endpoint."""
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    @app.post("/dicomweb/studies")
    async def stow(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    @app.get("/held")
    def held() -> dict[str, bool]:
        entered.release()
        return {"released": gate.wait(WAIT_SECONDS)}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(
        RequestLimitsMiddleware,
        max_request_size=MAX_REQUEST_SIZE,
        max_concurrent_requests=MAX_CONCURRENT_REQUESTS,
        read_timeout=READ_TIMEOUT_SECONDS,
    )
    return app


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def entered() -> threading.Semaphore:
    return threading.Semaphore(0)


@pytest.fixture
def server(gate: threading.Event, entered: threading.Semaphore) -> Iterator[HttpServer]:
    http_server = HttpServer(
        limited_app(gate, entered),
        LOOPBACK,
        free_port(),
        keep_alive_timeout=1,
        read_timeout=READ_TIMEOUT_SECONDS,
    )
    http_server.start()
    yield http_server
    gate.set()
    http_server.stop()


@pytest.fixture
def client(server: HttpServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"http://{LOOPBACK}:{server.port}", timeout=WAIT_SECONDS
    ) as http_client:
        yield http_client


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Read until the server closes ``sock``; return the bytes and the seconds it took."""
    started = time.monotonic()
    sock.settimeout(WAIT_SECONDS)
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received, time.monotonic() - started


class TestRequestSize:
    def test_body_within_limit_is_served(self, client: httpx.Client) -> None:
        response = client.post("/echo", content=bytes(MAX_REQUEST_SIZE))

        assert response.status_code == 200
        assert response.json() == {"received": MAX_REQUEST_SIZE}

    def test_declared_length_above_limit_is_413(self, client: httpx.Client) -> None:
        response = client.post("/echo", content=bytes(MAX_REQUEST_SIZE + 1))

        assert response.status_code == 413
        assert response.json() == {
            "detail": "The request body of 1001 bytes exceeds 1000 bytes, the limit set by "
            "http.max_request_size; send a smaller request"
        }

    def test_chunked_body_above_limit_is_413(self, client: httpx.Client) -> None:
        def chunks() -> Iterator[bytes]:
            for _ in range(4):
                yield bytes(400)

        response = client.post("/echo", content=chunks())

        assert response.status_code == 413
        assert response.json() == {"detail": TOO_LARGE_DETAIL}

    def test_stow_has_its_own_limit(self, client: httpx.Client) -> None:
        response = client.post("/dicomweb/studies", content=bytes(3 * MAX_REQUEST_SIZE))

        assert response.status_code == 200
        assert response.json() == {"received": 3 * MAX_REQUEST_SIZE}


class TestConcurrency:
    def test_request_above_limit_is_503(
        self,
        client: httpx.Client,
        server: HttpServer,
        gate: threading.Event,
        entered: threading.Semaphore,
    ) -> None:
        url = f"http://{LOOPBACK}:{server.port}/held"
        with concurrent.futures.ThreadPoolExecutor(MAX_CONCURRENT_REQUESTS) as pool:
            held = [
                pool.submit(httpx.get, url, timeout=WAIT_SECONDS)
                for _ in range(MAX_CONCURRENT_REQUESTS)
            ]
            for _ in range(MAX_CONCURRENT_REQUESTS):
                assert entered.acquire(timeout=WAIT_SECONDS)

            rejected = client.get("/held")
            probe = client.get("/health")
            gate.set()
            held_statuses = [future.result().status_code for future in held]

        assert rejected.status_code == 503
        assert rejected.headers["Retry-After"] == "1"
        assert rejected.json() == {
            "detail": "The server is serving 2 requests, the limit set by "
            "http.max_concurrent_requests; try again later"
        }
        assert probe.status_code == 200
        assert held_statuses == [200, 200]

    def test_slots_free_after_requests(self, client: httpx.Client) -> None:
        for _ in range(3 * MAX_CONCURRENT_REQUESTS):
            response = client.post("/echo", content=b"x")
            assert response.status_code == 200


class TestStalledClients:
    def test_silent_connection_is_closed(self, server: HttpServer) -> None:
        with socket.create_connection((LOOPBACK, server.port)) as sock:
            received, seconds = read_until_closed(sock)

        assert received == b""
        assert seconds < 3

    def test_partial_head_is_closed(self, server: HttpServer) -> None:
        with socket.create_connection((LOOPBACK, server.port)) as sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\n")
            received, seconds = read_until_closed(sock)

        assert received == b""
        assert seconds < 3

    def test_stalled_body_is_408(self, server: HttpServer) -> None:
        with socket.create_connection((LOOPBACK, server.port)) as sock:
            sock.sendall(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n" + bytes(100)
            )
            received, seconds = read_until_closed(sock)

        assert received.startswith(b"HTTP/1.1 408 ")
        assert b"the limit set by http.read_timeout" in received
        assert seconds < 3

    def test_keep_alive_connection_is_closed(self, server: HttpServer) -> None:
        with socket.create_connection((LOOPBACK, server.port)) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            received, seconds = read_until_closed(sock)

        assert received.startswith(b"HTTP/1.1 200 ")
        assert seconds < 3


def test_app_applies_max_request_size(make_archive: Callable[..., Archive]) -> None:
    archive = make_archive(http__max_request_size=100)
    server = HttpServer(create_app(None, archive), LOOPBACK, free_port())  # type: ignore[arg-type]
    server.start()
    try:
        with httpx.Client(base_url=f"http://{LOOPBACK}:{server.port}") as client:
            assert wait_until(lambda: client.get("/health").status_code == 200, WAIT_SECONDS)
            response = client.post("/api/nodes", content=bytes(101))
    finally:
        server.stop()

    assert response.status_code == 413
    assert "http.max_request_size" in response.json()["detail"]
