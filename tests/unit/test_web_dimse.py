"""The DIMSE service settings API without a running DIMSE server: validation and saving."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import Engine

from dicomvault.index.saved_settings import SavedSettings


@pytest.fixture(scope="module")
def index_backend() -> str:
    """Run on SQLite only, because these tests exercise HTTP routes and pages.

    The index queries behind them run on both back-ends in test_index,
    test_users and test_web_search.
    """
    return "sqlite"


class TestRead:
    def test_current_settings(self, client: httpx.Client) -> None:
        response = client.get("/api/dimse")

        assert response.status_code == 200
        assert response.json() == {
            "ae_title": "DICOMVAULT",
            "host": "127.0.0.1",
            "port": 11112,
            "allowed_calling_ae_titles": [],
            "unknown_callers": "accept",
            "running": False,
            "open_associations": None,
            "sources": {
                "ae_title": "default",
                "host": "default",
                "port": "default",
                "allowed_calling_ae_titles": "default",
                "unknown_callers": "default",
            },
        }


class TestChange:
    def test_patch_saves(self, client: httpx.Client, migrated_engine: Engine) -> None:
        response = client.patch(
            "/api/dimse", json={"ae_title": " ARCHIVE2 ", "allowed_calling_ae_titles": ["CT01"]}
        )

        assert response.status_code == 200, response.text
        assert response.json()["ae_title"] == "ARCHIVE2"
        assert response.json()["allowed_calling_ae_titles"] == ["CT01"]
        assert response.json()["sources"]["ae_title"] == "index database"
        assert response.json()["sources"]["port"] == "default"
        assert SavedSettings(migrated_engine).load() == {
            "dimse.ae_title": "ARCHIVE2",
            "dimse.allowed_calling_ae_titles": ["CT01"],
        }

    def test_get_after_patch(self, client: httpx.Client) -> None:
        client.patch("/api/dimse", json={"port": 4242})

        response = client.get("/api/dimse")

        assert response.json()["port"] == 4242

    def test_put_all(self, client: httpx.Client, migrated_engine: Engine) -> None:
        body = {
            "ae_title": "ARCHIVE3",
            "host": "127.0.0.1",
            "port": 4243,
            "allowed_calling_ae_titles": [],
            "unknown_callers": "reject",
        }

        response = client.put("/api/dimse", json=body)

        assert response.status_code == 200, response.text
        assert SavedSettings(migrated_engine).load() == {
            f"dimse.{key}": value for key, value in body.items()
        }

    def test_patch_unknown_callers(self, client: httpx.Client, migrated_engine: Engine) -> None:
        response = client.patch("/api/dimse", json={"unknown_callers": ["query", "store"]})

        assert response.status_code == 200, response.text
        assert response.json()["unknown_callers"] == "store,query"
        assert response.json()["sources"]["unknown_callers"] == "index database"
        assert SavedSettings(migrated_engine).load() == {"dimse.unknown_callers": "store,query"}

    def test_reset(self, client: httpx.Client, migrated_engine: Engine) -> None:
        client.patch("/api/dimse", json={"ae_title": "ARCHIVE2", "port": 4242})

        response = client.delete("/api/dimse/saved")

        assert response.status_code == 200
        assert response.json()["ae_title"] == "DICOMVAULT"
        assert response.json()["port"] == 11112
        assert response.json()["sources"]["ae_title"] == "default"
        assert SavedSettings(migrated_engine).load() == {}


class TestInvalid:
    @pytest.mark.parametrize(
        ("body", "message"),
        [
            (
                {"ae_title": "BACK\\SLASH"},
                "'dimse.ae_title' must be 1 to 16 printable ASCII characters without "
                "backslash, got 'BACK\\\\SLASH'",
            ),
            (
                {"ae_title": "SEVENTEEN_LETTERS"},
                "'dimse.ae_title' must be 1 to 16 printable ASCII characters without "
                "backslash, got 'SEVENTEEN_LETTERS'",
            ),
            ({"port": 70000}, "'dimse.port' must be an integer from 0 to 65535, got 70000"),
            ({"port": 0}, "are both 0, so no DIMSE port would be open; set at least one of them"),
            (
                {"host": "pacs.example.org"},
                "'dimse.host' must be an IP address such as 127.0.0.1, got 'pacs.example.org'",
            ),
            (
                {"allowed_calling_ae_titles": ["CT01", ""]},
                "'dimse.allowed_calling_ae_titles' must be 1 to 16 printable ASCII characters "
                "without backslash, got ''",
            ),
            (
                {"unknown_callers": "deny"},
                "'dimse.unknown_callers' must be accept, reject, echo or permissions separated "
                "by commas (store, query, retrieve), got 'deny'",
            ),
        ],
        ids=[
            "backslash",
            "too-long",
            "port-high",
            "port-zero",
            "host-name",
            "empty-title",
            "unknown-callers",
        ],
    )
    def test_rejected_with_message(
        self, client: httpx.Client, migrated_engine: Engine, body: dict[str, object], message: str
    ) -> None:
        response = client.patch("/api/dimse", json=body)

        assert response.status_code == 422
        assert message in response.json()["detail"]
        assert SavedSettings(migrated_engine).load() == {}

    def test_port_not_a_number(self, client: httpx.Client) -> None:
        response = client.patch("/api/dimse", json={"port": "abc"})

        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "port"]

    def test_unknown_key(self, client: httpx.Client) -> None:
        response = client.patch("/api/dimse", json={"max_associations": 5})

        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "max_associations"]

    def test_put_needs_every_setting(self, client: httpx.Client) -> None:
        response = client.put("/api/dimse", json={"ae_title": "ARCHIVE2"})

        assert response.status_code == 422
        assert response.json()["detail"] == (
            "PUT needs every setting; missing: host, port, allowed_calling_ae_titles, "
            "unknown_callers. "
            "Use PATCH to change only some"
        )
