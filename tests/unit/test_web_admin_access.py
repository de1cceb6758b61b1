"""Who may use the management API: admins only, with a token or a session and CSRF token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from dicomvault.index.users import UserStore
from dicomvault.users import Role
from tests.unit.conftest import ADMIN_PASSWORD, WEB_TIMEOUT_SECONDS

USER_PASSWORD = "user password for tests"
NODE = {"host": "127.0.0.1", "port": 11113, "description": "", "tls": False}

# Every management route, with a valid body where it takes one.
READS: list[tuple[str, str, Any]] = [
    ("GET", "/api/dimse", None),
    ("GET", "/api/nodes", None),
    ("GET", "/api/nodes/PEER", None),
    ("GET", "/api/usage", None),
    ("GET", "/api/logs", None),
    ("GET", "/api/audit", None),
    ("GET", "/api/audit/export.csv", None),
]
CHANGES: list[tuple[str, str, Any]] = [
    ("PATCH", "/api/dimse", {"ae_title": "NEWTITLE"}),
    (
        "PUT",
        "/api/dimse",
        {
            "ae_title": "NEWTITLE",
            "host": "127.0.0.1",
            "port": 11112,
            "allowed_calling_ae_titles": [],
        },
    ),
    ("DELETE", "/api/dimse/saved", None),
    ("POST", "/api/nodes", {"ae_title": "PEER", **NODE}),
    ("PUT", "/api/nodes/PEER", NODE),
    ("DELETE", "/api/nodes/PEER", None),
    ("POST", "/api/nodes/PEER/echo", None),
    ("DELETE", "/api/studies/1.2.3", None),
    ("DELETE", "/api/studies/1.2.3/series/1.2.3.4", None),
]
ROUTE_IDS = [f"{method} {path}" for method, path, _ in READS + CHANGES]
CHANGE_IDS = [f"{method} {path}" for method, path, _ in CHANGES]


@pytest.fixture(scope="module")
def index_backend() -> str:
    """Run on SQLite only, because these tests exercise HTTP routes and pages.

    The index queries behind them run on both back-ends in test_index,
    test_users and test_web_search.
    """
    return "sqlite"


@pytest.fixture
def anonymous(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=WEB_TIMEOUT_SECONDS) as http_client:
        yield http_client


@pytest.fixture
def user_token(migrated_engine: Engine, admin_token: str) -> str:
    """An API token of "viewer", who has the user role; the admin exists too."""
    store = UserStore(migrated_engine)
    viewer = store.add("viewer", Role.USER, USER_PASSWORD)
    return store.create_token(viewer, "tests")[1]


def send(client: httpx.Client, method: str, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return client.request(method, path, json=body, **kwargs)


@pytest.mark.parametrize(("method", "path", "body"), READS + CHANGES, ids=ROUTE_IDS)
def test_without_credentials_401(
    anonymous: httpx.Client, user_token: str, method: str, path: str, body: Any
) -> None:
    response = send(anonymous, method, path, body)

    assert response.status_code == 401
    assert "Login required" in response.json()["detail"]


@pytest.mark.parametrize(("method", "path", "body"), READS + CHANGES, ids=ROUTE_IDS)
def test_user_role_403(
    anonymous: httpx.Client, user_token: str, method: str, path: str, body: Any
) -> None:
    response = send(
        anonymous, method, path, body, headers={"Authorization": f"Bearer {user_token}"}
    )

    assert response.status_code == 403
    assert response.json()["detail"] == "User viewer lacks the admin role this action needs"


@pytest.mark.parametrize(("method", "path", "body"), CHANGES, ids=CHANGE_IDS)
def test_session_without_csrf_403(
    anonymous: httpx.Client, user_token: str, method: str, path: str, body: Any
) -> None:
    login = anonymous.post("/api/login", json={"name": "admin", "password": ADMIN_PASSWORD})
    assert login.status_code == 200, login.text

    response = send(anonymous, method, path, body)

    assert response.status_code == 403
    assert "X-CSRF-Token" in response.json()["detail"]


@pytest.mark.parametrize(("method", "path", "body"), CHANGES, ids=CHANGE_IDS)
def test_session_with_csrf_passes(
    anonymous: httpx.Client, user_token: str, method: str, path: str, body: Any
) -> None:
    login = anonymous.post("/api/login", json={"name": "admin", "password": ADMIN_PASSWORD})
    csrf = login.json()["csrf_token"]

    response = send(anonymous, method, path, body, headers={"X-CSRF-Token": csrf})

    assert response.status_code not in (401, 403), response.text
