"""DICOMweb access: open by default on loopback, or only for the archive's users."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine

from dicomvault.archive import Archive
from dicomvault.config import ConfigError, load_settings
from dicomvault.index.users import UserStore
from dicomvault.ingest.manager import TaskManager
from dicomvault.users import Role
from dicomvault.web.app import create_app
from dicomvault.web.server import HttpServer
from tests.support.network import LOOPBACK, free_port
from tests.unit.conftest import WEB_TIMEOUT_SECONDS

USER_PASSWORD = "viewer password for tests"
STUDIES = "/dicomweb/studies"
JSON = {"Accept": "application/dicom+json"}


@pytest.fixture(scope="module")
def index_backend() -> str:
    """Run on SQLite only, because these tests exercise HTTP routes and pages.

    The index queries behind them run on both back-ends in test_index,
    test_users and test_web_search.
    """
    return "sqlite"


@pytest.fixture
def users_only_url(manager: TaskManager) -> Iterator[str]:
    """Serve the application with http.dicomweb_access = "users"; yield its base URL."""
    context = manager.context
    http = dataclasses.replace(context.settings.http, dicomweb_access="users")
    settings = dataclasses.replace(context.settings, http=http)
    archive = Archive(settings, context.engine, context.storage)
    server = HttpServer(create_app(manager, archive), LOOPBACK, free_port())
    server.start()
    yield f"http://{LOOPBACK}:{server.port}"
    server.stop()


@pytest.fixture
def viewer_token(migrated_engine: Engine) -> str:
    """An API token of "viewer", who has the user role."""
    store = UserStore(migrated_engine)
    viewer = store.add("viewer", Role.USER, USER_PASSWORD)
    return store.create_token(viewer, "tests")[1]


def get(base_url: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    with httpx.Client(base_url=base_url, timeout=WEB_TIMEOUT_SECONDS) as client:
        return client.get(path, headers={**JSON, **(headers or {})})


class TestUsersOnly:
    def test_no_credentials_rejected(self, users_only_url: str) -> None:
        response = get(users_only_url, STUDIES)

        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer TOKEN" in response.json()["detail"]

    def test_token_accepted(self, users_only_url: str, viewer_token: str) -> None:
        response = get(users_only_url, STUDIES, {"Authorization": f"Bearer {viewer_token}"})

        assert response.status_code == 204  # no studies stored

    def test_unknown_token_rejected(self, users_only_url: str) -> None:
        response = get(users_only_url, STUDIES, {"Authorization": "Bearer dvt_not_a_token"})

        assert response.status_code == 401

    def test_wado_uri_rejected(self, users_only_url: str) -> None:
        response = get(users_only_url, "/wado?requestType=WADO&studyUID=1&seriesUID=2&objectUID=3")

        assert response.status_code == 401

    def test_session_reads_and_needs_csrf_to_store(
        self, users_only_url: str, viewer_token: str
    ) -> None:
        with httpx.Client(base_url=users_only_url, timeout=WEB_TIMEOUT_SECONDS) as client:
            login = client.post("/api/login", json={"name": "viewer", "password": USER_PASSWORD})
            searched = client.get(STUDIES, headers=JSON)
            content_type = 'multipart/related; type="application/dicom"; boundary=b'
            without_csrf = client.post(
                STUDIES, content=b"--b--\r\n", headers={"Content-Type": content_type}
            )
            with_csrf = client.post(
                STUDIES,
                content=b"--b--\r\n",
                headers={
                    "Content-Type": content_type,
                    "X-CSRF-Token": login.json()["csrf_token"],
                },
            )

        assert login.status_code == 200
        assert searched.status_code == 204
        assert without_csrf.status_code == 403
        assert with_csrf.status_code not in (401, 403)


def test_open_by_default(server_url: str) -> None:
    assert get(server_url, STUDIES).status_code == 204


class TestSettings:
    def test_open_on_network_address_rejected(self) -> None:
        with pytest.raises(ConfigError) as caught:
            load_settings(environ={"DICOMVAULT_HTTP_HOST": "0.0.0.0"})

        assert "not a loopback address" in str(caught.value)
        assert 'set http.dicomweb_access = "users"' in str(caught.value)

    def test_users_on_network_address_allowed(self) -> None:
        settings = load_settings(
            environ={"DICOMVAULT_HTTP_HOST": "0.0.0.0", "DICOMVAULT_HTTP_DICOMWEB_ACCESS": "users"}
        )

        assert settings.http.dicomweb_access == "users"

    def test_open_without_http_allowed(self) -> None:
        settings = load_settings(
            environ={"DICOMVAULT_HTTP_HOST": "0.0.0.0", "DICOMVAULT_HTTP_PORT": "0"}
        )

        assert settings.http.port == 0
