"""The management API against running servers: DIMSE settings changed live, node C-ECHO."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.support.dcmtk import echoscu
from tests.support.network import LOOPBACK, free_port, port_accepts_connections, wait_until
from tests.support.server import DicomvaultServer, ServerFactory

pytestmark = pytest.mark.integration

TIMEOUT_SECONDS = 30


@pytest.fixture(scope="module")
def index_backend() -> str:
    """Run on SQLite only, because these tests exercise HTTP routes and pages.

    The index queries behind them run on both back-ends in test_index,
    test_users and test_web_search.
    """
    return "sqlite"


@contextmanager
def open_association(port: int, called_ae: str) -> Iterator[object]:
    """Yield an established Verification association to 127.0.0.1:``port``."""
    ae = AE(ae_title="HOLDER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_SECONDS
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, port, ae_title=called_ae)
    assert assoc.is_established
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def register(client: httpx.Client, target: DicomvaultServer) -> None:
    response = client.post(
        "/api/nodes",
        json={"ae_title": target.ae_title, "host": LOOPBACK, "port": target.port},
    )
    assert response.status_code == 201, response.text


class TestDimseSettings:
    def test_allowed_calling_titles_apply_at_once(self, start_server: ServerFactory) -> None:
        server = start_server()
        with server.admin_client() as client:
            response = client.patch("/api/dimse", json={"allowed_calling_ae_titles": ["ALLOWED"]})

            rejected = echoscu(server.port, server.ae_title, calling_ae="OTHER")
            accepted = echoscu(server.port, server.ae_title, calling_ae="ALLOWED")

        assert response.status_code == 200, response.text
        assert rejected.returncode != 0, rejected.describe()
        assert "Association Rejected" in rejected.output, rejected.describe()
        assert accepted.returncode == 0, accepted.describe()

    def test_port_change_moves_listener(self, start_server: ServerFactory) -> None:
        server = start_server()
        new_port = free_port()
        with server.admin_client() as client, open_association(server.port, "DICOMVAULT") as held:
            response = client.patch("/api/dimse", json={"port": new_port})
            status = client.get("/api/dimse").json()
            # The association opened before the change still works.
            held_status = held.send_c_echo()  # type: ignore[attr-defined]

        assert response.status_code == 200, response.text
        assert status["port"] == new_port
        assert status["running"] is True
        assert status["open_associations"] == 1
        assert held_status.Status == 0x0000
        assert not port_accepts_connections(server.port)
        moved = echoscu(new_port, server.ae_title)
        assert moved.returncode == 0, moved.describe()

    def test_port_in_use_changes_nothing(self, start_server: ServerFactory) -> None:
        server = start_server()
        with socket.socket() as taken:
            taken.bind((LOOPBACK, 0))
            taken.listen()
            busy_port = taken.getsockname()[1]
            with server.admin_client() as client:
                response = client.patch("/api/dimse", json={"port": busy_port, "ae_title": "NEW"})
                status = client.get("/api/dimse").json()

        assert response.status_code == 409
        assert response.json()["detail"] == (
            f"Cannot listen on {LOOPBACK}:{busy_port}: Address already in use; "
            f"the DIMSE service still listens on {LOOPBACK}:{server.port}"
        )
        assert status["port"] == server.port
        assert status["ae_title"] == "DICOMVAULT"
        assert echoscu(server.port, server.ae_title).returncode == 0

    def test_saved_port_survives_restart(self, start_server: ServerFactory) -> None:
        server = start_server()
        new_port = free_port()
        with server.admin_client() as client:
            response = client.patch("/api/dimse", json={"port": new_port})
        assert response.status_code == 200, response.text
        server.stop()

        # The command line names the old port; the saved port takes precedence,
        # so the server is expected on new_port. A repeated option's last value
        # wins, so extra_args overrides the --port that DicomvaultServer adds.
        again = DicomvaultServer(
            server.workdir,
            server.index_url,
            data_dir=server.data_dir,
            port=new_port,
            extra_args=["--port", str(server.port)],
        )
        try:
            again.start()
            echoed = echoscu(new_port, again.ae_title)
            log = again.log_text()
        finally:
            again.stop()

        assert echoed.returncode == 0, echoed.describe()
        assert f"Using dimse.port = {new_port} saved in the index database" in log


class TestNodeEcho:
    def test_echo_succeeds_and_follows_ae_title(self, start_server: ServerFactory) -> None:
        target = start_server(ae_title="TARGET")
        archive = start_server()
        with archive.admin_client() as client, target.admin_client() as target_client:
            register(client, target)
            first = client.post(f"/api/nodes/{target.ae_title}/echo").json()

            target_client.patch("/api/dimse", json={"allowed_calling_ae_titles": ["RENAMED"]})
            refused = client.post(f"/api/nodes/{target.ae_title}/echo").json()

            renamed = client.patch("/api/dimse", json={"ae_title": "RENAMED"})
            second = client.post(f"/api/nodes/{target.ae_title}/echo").json()

        assert first["success"] is True, first
        assert first["message"] == "success"
        assert first["milliseconds"] > 0
        assert refused["success"] is False
        assert refused["message"] == (
            "the node rejected the association; check its AE title and allow-list"
        )
        assert renamed.json()["ae_title"] == "RENAMED"
        assert second["success"] is True, second

    def test_echo_of_stopped_node(self, start_server: ServerFactory) -> None:
        target = start_server(ae_title="TARGET")
        archive = start_server()
        with archive.admin_client() as client:
            register(client, target)
            target.stop()
            assert wait_until(lambda: not port_accepts_connections(target.port), TIMEOUT_SECONDS)

            outcome = client.post(f"/api/nodes/{target.ae_title}/echo", params={"timeout": 5})

        assert outcome.status_code == 200
        assert outcome.json()["success"] is False
        assert outcome.json()["message"] == (
            "no association: the connection was refused, timed out or aborted"
        )
