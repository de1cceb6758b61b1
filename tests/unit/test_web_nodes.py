"""The remote nodes API: list, add, change, remove and C-ECHO a node that is down."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import Engine

from dicomvault.index.nodes import NodeRegistry
from dicomvault.nodes import RemoteNode
from dicomvault.permissions import Permission
from tests.support.network import LOOPBACK, free_port

PEER = {"ae_title": "PEER", "host": LOOPBACK, "port": 11113, "description": "test", "tls": False}
# What the API adds to a node registered without access fields.
DEFAULT_ACCESS = {
    "permissions": ["store", "query", "retrieve"],
    "source_addresses": [],
    "tls_client_subject": "",
}


@pytest.fixture(scope="module")
def index_backend() -> str:
    """Run on SQLite only, because these tests exercise HTTP routes and pages.

    The index queries behind them run on both back-ends in test_index,
    test_users and test_web_search.
    """
    return "sqlite"


class TestNodes:
    def test_add_then_list(self, client: httpx.Client, migrated_engine: Engine) -> None:
        added = client.post("/api/nodes", json=PEER)
        listed = client.get("/api/nodes")

        assert added.status_code == 201, added.text
        assert added.json() == {**PEER, **DEFAULT_ACCESS}
        assert listed.json() == [{**PEER, **DEFAULT_ACCESS}]
        assert NodeRegistry(migrated_engine).get("PEER") == RemoteNode(
            "PEER", LOOPBACK, 11113, "test", False
        )

    def test_get_one(self, client: httpx.Client) -> None:
        client.post("/api/nodes", json=PEER)

        response = client.get("/api/nodes/PEER")

        assert response.status_code == 200
        assert response.json() == {**PEER, **DEFAULT_ACCESS}

    def test_change(self, client: httpx.Client) -> None:
        client.post("/api/nodes", json=PEER)

        response = client.put(
            "/api/nodes/PEER", json={"host": "127.0.0.2", "port": 104, "description": "moved"}
        )

        assert response.status_code == 200, response.text
        assert client.get("/api/nodes/PEER").json() == {
            "ae_title": "PEER",
            "host": "127.0.0.2",
            "port": 104,
            "description": "moved",
            "tls": False,
            **DEFAULT_ACCESS,
        }

    def test_access_set_and_read(self, client: httpx.Client, migrated_engine: Engine) -> None:
        access = {
            "permissions": ["query", "store"],
            "source_addresses": ["10.0.0.5", "10.0.1.9/24"],
            "tls_client_subject": "cn=ct01, O=Hospital",
        }

        added = client.post("/api/nodes", json={**PEER, **access})

        assert added.status_code == 201, added.text
        assert added.json() == {
            **PEER,
            "permissions": ["store", "query"],
            "source_addresses": ["10.0.0.5", "10.0.1.0/24"],
            "tls_client_subject": "CN=ct01,O=Hospital",
        }
        node = NodeRegistry(migrated_engine).get("PEER")
        assert node is not None
        assert node.permissions == frozenset({Permission.STORE, Permission.QUERY})

    def test_change_permissions(self, client: httpx.Client, migrated_engine: Engine) -> None:
        client.post("/api/nodes", json=PEER)
        fields = {key: value for key, value in PEER.items() if key != "ae_title"}

        response = client.put("/api/nodes/PEER", json={**fields, "permissions": []})

        assert response.status_code == 200, response.text
        assert response.json()["permissions"] == []
        node = NodeRegistry(migrated_engine).get("PEER")
        assert node is not None
        assert node.permissions == frozenset()

    def test_remove(self, client: httpx.Client) -> None:
        client.post("/api/nodes", json=PEER)

        response = client.delete("/api/nodes/PEER")

        assert response.status_code == 204
        assert client.get("/api/nodes").json() == []

    def test_duplicate_rejected(self, client: httpx.Client) -> None:
        client.post("/api/nodes", json=PEER)

        response = client.post("/api/nodes", json=PEER)

        assert response.status_code == 409
        assert response.json()["detail"] == (
            "A node with AE title 'PEER' is registered; change it with PUT"
        )


class TestNotFound:
    @pytest.mark.parametrize(
        ("method", "path", "body"),
        [
            ("GET", "/api/nodes/NOPE", None),
            ("PUT", "/api/nodes/NOPE", {"host": LOOPBACK, "port": 104}),
            ("DELETE", "/api/nodes/NOPE", None),
            ("POST", "/api/nodes/NOPE/echo", None),
        ],
        ids=["get", "change", "remove", "echo"],
    )
    def test_unknown_node_404(
        self, client: httpx.Client, method: str, path: str, body: object
    ) -> None:
        response = client.request(method, path, json=body)

        assert response.status_code == 404
        assert response.json()["detail"] == "No node with AE title 'NOPE'"


class TestInvalid:
    @pytest.mark.parametrize(
        ("change", "message"),
        [
            (
                {"ae_title": "A\\B"},
                "Invalid node: an AE title must be 1 to 16 printable ASCII characters "
                "without backslash, got 'A\\\\B'",
            ),
            (
                {"port": 70000},
                "Invalid node: 'port' must be an integer from 1 to 65535, got 70000",
            ),
            (
                {"host": "bad host!"},
                "Invalid node: 'host' must be a host name or IP address, got 'bad host!'",
            ),
            (
                {"source_addresses": ["pacs.example.org"]},
                "Invalid node: 'source_addresses' must contain IP addresses or networks such "
                "as 10.0.0.5 or 10.0.0.0/24, got 'pacs.example.org'",
            ),
            (
                {"tls_client_subject": "ct01"},
                "Invalid node: 'tls_client_subject' must be a distinguished name in RFC 4514 "
                "form such as 'CN=ct01.example.org,O=Hospital', got 'ct01'",
            ),
        ],
        ids=["ae-title", "port", "host", "source-address", "subject"],
    )
    def test_rejected_with_message(
        self, client: httpx.Client, change: dict[str, object], message: str
    ) -> None:
        response = client.post("/api/nodes", json={**PEER, **change})

        assert response.status_code == 422
        assert response.json()["detail"] == message
        assert client.get("/api/nodes").json() == []

    def test_unknown_permission(self, client: httpx.Client) -> None:
        response = client.post("/api/nodes", json={**PEER, "permissions": ["echo"]})

        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "permissions", 0]
        assert client.get("/api/nodes").json() == []

    def test_missing_port(self, client: httpx.Client) -> None:
        response = client.post("/api/nodes", json={"ae_title": "PEER", "host": LOOPBACK})

        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "port"]

    def test_echo_timeout_out_of_range(self, client: httpx.Client) -> None:
        client.post("/api/nodes", json=PEER)

        response = client.post("/api/nodes/PEER/echo", params={"timeout": 600})

        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["query", "timeout"]


class TestEcho:
    # pynetdicom 3.0.4 shuts down the socket of a refused connection before
    # closing it; shutdown raises, so the socket is closed by the garbage
    # collector with a ResourceWarning.
    @pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
    def test_node_down(self, client: httpx.Client) -> None:
        client.post("/api/nodes", json={**PEER, "port": free_port()})

        response = client.post("/api/nodes/PEER/echo", params={"timeout": 5})

        assert response.status_code == 200
        assert response.json()["success"] is False
        assert response.json()["message"] == (
            "no association: the connection was refused, timed out or aborted"
        )
        assert 0 <= response.json()["milliseconds"] < 5000
