"""Logins, sessions with CSRF tokens, API tokens and roles on the admin API."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine

from dicomvault.index.users import MAX_FAILED_LOGINS, UserStore
from dicomvault.users import Role
from tests.unit.conftest import ADMIN_PASSWORD, WEB_TIMEOUT_SECONDS

USER_PASSWORD = "user password for tests"


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
def store(migrated_engine: Engine, admin_token: str) -> UserStore:
    """The user store, with the admin and the user "viewer"."""
    users = UserStore(migrated_engine)
    users.add("viewer", Role.USER, USER_PASSWORD)
    return users


def log_in(client: httpx.Client, name: str, password: str) -> str:
    response = client.post("/api/login", json={"name": name, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["csrf_token"])


class TestWithoutCredentials:
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/api/tasks"),
            ("POST", "/api/tasks"),
            ("GET", "/api/me"),
            ("GET", "/api/tokens"),
            ("GET", "/api/users"),
        ],
    )
    def test_rejected_with_401(
        self, anonymous: httpx.Client, store: UserStore, method: str, path: str
    ) -> None:
        response = anonymous.request(method, path)

        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert "Login required" in response.json()["detail"]

    def test_wrong_token(self, anonymous: httpx.Client, store: UserStore) -> None:
        response = anonymous.get("/api/tasks", headers={"Authorization": "Bearer dvt_nope"})

        assert response.status_code == 401
        assert response.json()["detail"] == "Invalid or revoked API token"

    def test_health_open(self, anonymous: httpx.Client) -> None:
        response = anonymous.get("/health")

        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


class TestLogin:
    def test_session_cookie(self, anonymous: httpx.Client, store: UserStore) -> None:
        response = anonymous.post("/api/login", json={"name": "admin", "password": ADMIN_PASSWORD})

        cookie = response.headers["set-cookie"]
        assert response.status_code == 200
        assert response.json()["name"] == "admin"
        assert response.json()["role"] == "admin"
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert anonymous.get("/api/tasks").status_code == 200

    def test_wrong_password(self, anonymous: httpx.Client, store: UserStore) -> None:
        response = anonymous.post("/api/login", json={"name": "admin", "password": "wrong one!"})

        assert response.status_code == 401
        assert response.json()["detail"] == "Invalid user name or password"
        assert "set-cookie" not in response.headers

    def test_lockout(self, anonymous: httpx.Client, store: UserStore) -> None:
        for _ in range(MAX_FAILED_LOGINS):
            anonymous.post("/api/login", json={"name": "viewer", "password": "wrong one!"})

        response = anonymous.post("/api/login", json={"name": "viewer", "password": USER_PASSWORD})

        assert response.status_code == 429
        assert int(response.headers["retry-after"]) > 0
        assert "Too many failed logins" in response.json()["detail"]

    def test_logout_ends_session(self, anonymous: httpx.Client, store: UserStore) -> None:
        log_in(anonymous, "admin", ADMIN_PASSWORD)
        cookie = anonymous.cookies.get("dicomvault_session")

        assert anonymous.post("/api/logout").status_code == 204
        anonymous.cookies.set("dicomvault_session", str(cookie))
        assert anonymous.get("/api/me").status_code == 401


class TestCsrf:
    def test_change_without_csrf_token(self, anonymous: httpx.Client, store: UserStore) -> None:
        log_in(anonymous, "admin", ADMIN_PASSWORD)

        response = anonymous.post("/api/tokens", json={"name": "script"})

        assert response.status_code == 403
        assert "X-CSRF-Token" in response.json()["detail"]

    def test_change_with_csrf_token(self, anonymous: httpx.Client, store: UserStore) -> None:
        csrf = log_in(anonymous, "admin", ADMIN_PASSWORD)

        response = anonymous.post(
            "/api/tokens", json={"name": "script"}, headers={"X-CSRF-Token": csrf}
        )

        assert response.status_code == 201
        assert response.json()["token"].startswith("dvt_")

    def test_read_needs_no_csrf_token(self, anonymous: httpx.Client, store: UserStore) -> None:
        log_in(anonymous, "viewer", USER_PASSWORD)

        assert anonymous.get("/api/me").json()["name"] == "viewer"


class TestTokensAndRoles:
    def test_token_lifecycle(
        self, anonymous: httpx.Client, store: UserStore, server_url: str
    ) -> None:
        csrf = log_in(anonymous, "viewer", USER_PASSWORD)
        headers = {"X-CSRF-Token": csrf}
        created = anonymous.post("/api/tokens", json={"name": "export"}, headers=headers).json()
        bearer = {"Authorization": f"Bearer {created['token']}"}

        me = httpx.get(f"{server_url}/api/me", headers=bearer, timeout=WEB_TIMEOUT_SECONDS)
        listed = anonymous.get("/api/tokens").json()
        revoked = anonymous.delete(f"/api/tokens/{created['id']}", headers=headers)
        after = httpx.get(f"{server_url}/api/me", headers=bearer, timeout=WEB_TIMEOUT_SECONDS)

        assert me.json() == {"name": "viewer", "role": "user", "csrf_token": None}
        assert [entry["name"] for entry in listed] == ["export"]
        assert "token" not in listed[0]
        assert revoked.status_code == 204
        assert after.status_code == 401

    def test_user_role_gets_403_on_admin_actions(
        self, anonymous: httpx.Client, store: UserStore
    ) -> None:
        csrf = log_in(anonymous, "viewer", USER_PASSWORD)

        tasks = anonymous.get("/api/tasks")
        users = anonymous.post(
            "/api/users",
            json={"name": "eve", "password": "a long password"},
            headers={"X-CSRF-Token": csrf},
        )

        assert tasks.status_code == 403
        assert tasks.json()["detail"] == "User viewer lacks the admin role this action needs"
        assert users.status_code == 403

    def test_admin_manages_users(self, anonymous: httpx.Client, store: UserStore) -> None:
        csrf = log_in(anonymous, "admin", ADMIN_PASSWORD)
        headers = {"X-CSRF-Token": csrf}

        added = anonymous.post(
            "/api/users", json={"name": "carol", "password": "a long password"}, headers=headers
        )
        again = anonymous.post(
            "/api/users", json={"name": "carol", "password": "a long password"}, headers=headers
        )
        short = anonymous.post(
            "/api/users", json={"name": "dave", "password": "short"}, headers=headers
        )
        names = [user["name"] for user in anonymous.get("/api/users").json()]
        removed = anonymous.delete("/api/users/carol", headers=headers)
        myself = anonymous.delete("/api/users/admin", headers=headers)

        assert added.status_code == 201
        assert added.json() == {"name": "carol", "role": "user"}
        assert again.status_code == 409
        assert short.status_code == 422
        assert "at least 10 characters" in short.json()["detail"]
        assert names == ["admin", "carol", "viewer"]
        assert removed.status_code == 204
        assert myself.status_code == 409
