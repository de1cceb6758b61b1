"""Unit tests for the container health check, without a dicomvault server."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dicomvault.config import load_settings
from dicomvault.healthcheck import check_health, probe_host
from tests.support.network import LOOPBACK, free_port

PROBE_TIMEOUT_SECONDS = 30


def run_probe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dicomvault.healthcheck`` with only the DICOMVAULT_* variables in ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DICOMVAULT_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "dicomvault.healthcheck"],
        capture_output=True,
        text=True,
        env=environ,
        timeout=PROBE_TIMEOUT_SECONDS,
        check=False,
    )


class UnavailableHandler(BaseHTTPRequestHandler):
    """Responds to every GET with 503, as a server that runs but cannot serve would."""

    def do_GET(self) -> None:
        self.send_response(503, "Service Unavailable")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def unavailable_server() -> Iterator[int]:
    """Run an HTTP server on a loopback port that responds with 503, and yield its port."""
    server = ThreadingHTTPServer((LOOPBACK, 0), UnavailableHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


class TestProbeHost:
    @pytest.mark.parametrize(
        ("listen_host", "expected"),
        [
            ("0.0.0.0", "127.0.0.1"),
            ("::", "::1"),
            ("127.0.0.1", "127.0.0.1"),
            ("10.0.0.20", "10.0.0.20"),
            ("localhost", "localhost"),
        ],
    )
    def test_address(self, listen_host: str, expected: str) -> None:
        assert probe_host(listen_host) == expected


class TestCheckHealth:
    def test_http_off(self) -> None:
        settings = load_settings(environ={"DICOMVAULT_HTTP_PORT": "0"})
        healthy, description = check_health(settings, timeout=1)
        assert not healthy
        assert description.startswith("HTTP is off (http.port = 0), so there is no /health")

    def test_error_status(self, unavailable_server: int) -> None:
        settings = load_settings(environ={"DICOMVAULT_HTTP_PORT": str(unavailable_server)})
        healthy, description = check_health(settings, timeout=5)
        assert not healthy
        assert description == (
            f"GET http://{LOOPBACK}:{unavailable_server}/health returned 503 Service Unavailable"
        )

    def test_connection_refused(self) -> None:
        port = free_port()
        settings = load_settings(environ={"DICOMVAULT_HTTP_PORT": str(port)})
        healthy, description = check_health(settings, timeout=1)
        assert not healthy
        assert description.startswith(f"GET http://{LOOPBACK}:{port}/health failed: ")
        assert "refused" in description


class TestCommand:
    def test_unhealthy_exit_code(self) -> None:
        port = free_port()
        completed = run_probe({"DICOMVAULT_HTTP_PORT": str(port)})
        assert completed.returncode == 1
        assert completed.stdout == ""
        assert completed.stderr.startswith(
            f"Health check failed: GET http://{LOOPBACK}:{port}/health failed: "
        )

    def test_invalid_setting(self) -> None:
        completed = run_probe({"DICOMVAULT_HTTP_PORT": "abc"})
        assert completed.returncode == 1
        assert completed.stderr == (
            "Health check failed: Invalid setting DICOMVAULT_HTTP_PORT: must be an integer "
            "from 0 to 65535, got 'abc'\n"
        )
