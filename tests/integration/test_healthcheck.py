"""The container health check against a real `dicomvault serve`, over HTTP and HTTPS."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.certs import make_certificates
from tests.support.network import LOOPBACK
from tests.support.server import DicomvaultServer

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


@pytest.fixture
def server_factory() -> Iterator[list[DicomvaultServer]]:
    """Collect the servers a test starts and stop them when it ends."""
    started: list[DicomvaultServer] = []
    yield started
    for server in started:
        server.stop()


class TestHealthcheck:
    def test_http(self, tmp_path: Path, server_factory: list[DicomvaultServer]) -> None:
        server = DicomvaultServer(tmp_path, "")
        server_factory.append(server)
        server.start()

        completed = run_probe({"DICOMVAULT_HTTP_PORT": str(server.http_port)})
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout == f"GET http://{LOOPBACK}:{server.http_port}/health returned 200\n"

    def test_https_from_config_file(
        self, tmp_path: Path, server_factory: list[DicomvaultServer]
    ) -> None:
        certs = make_certificates(tmp_path / "certs")
        config = f'[http]\ntls_cert_file = "{certs.server}"\ntls_key_file = "{certs.server_key}"\n'
        (tmp_path / "server").mkdir()
        server = DicomvaultServer(tmp_path / "server", "", config=config)
        server_factory.append(server)
        server.start()
        assert server.config_path is not None

        # The probe finds HTTPS through the same file the server read.
        completed = run_probe(
            {
                "DICOMVAULT_CONFIG": str(server.config_path),
                "DICOMVAULT_HTTP_PORT": str(server.http_port),
            }
        )
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout == (
            f"GET https://{LOOPBACK}:{server.http_port}/health returned 200\n"
        )

    def test_stopped_server(self, tmp_path: Path, server_factory: list[DicomvaultServer]) -> None:
        server = DicomvaultServer(tmp_path, "")
        server_factory.append(server)
        server.start()
        assert server.stop() == 0

        completed = run_probe({"DICOMVAULT_HTTP_PORT": str(server.http_port)})
        assert completed.returncode == 1
        assert "Connection refused" in completed.stderr
