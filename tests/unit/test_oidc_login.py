"""Console single sign-on against oidc-provider-mock providers on loopback ports."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import urllib.parse
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import oidc_provider_mock
import pytest
import werkzeug.serving

from dicomvault.archive import Archive
from dicomvault.audit import AuditEvent, AuditOutcome
from dicomvault.index.users import UserStore
from dicomvault.users import Role
from dicomvault.web.app import create_app
from dicomvault.web.oidc import OidcLogin, OidcLoginError, read_client_secret
from dicomvault.web.server import HttpServer
from tests.support.network import LOOPBACK, free_port
from tests.unit.conftest import ADMIN_PASSWORD, WEB_TIMEOUT_SECONDS

_T = TypeVar("_T")

CLIENT_ID = "dicomvault-tests"
CLIENT_SECRET = "client secret for tests"
ADMIN_GROUP = "pacs-admins"
USER_GROUP = "radiologists"


@contextmanager
def run_provider() -> Iterator[str]:
    """Run an oidc-provider-mock server on 127.0.0.1 in a thread; yield its issuer URL."""
    server = werkzeug.serving.make_server(
        LOOPBACK, 0, oidc_provider_mock.app(require_nonce=True), threaded=True
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.fixture
def issuer() -> Iterator[str]:
    with run_provider() as url:
        yield url


@pytest.fixture
def make_server(
    tmp_path: Path, make_archive: Callable[..., Archive]
) -> Iterator[Callable[..., tuple[str, Archive]]]:
    """Return a factory that serves the application with auth settings; yields base URL, archive."""
    servers: list[HttpServer] = []
    secret_file = tmp_path / "oidc-client-secret"
    secret_file.write_text(CLIENT_SECRET)

    def factory(issuer: str, **overrides: Any) -> tuple[str, Archive]:
        archive = make_archive(
            auth__oidc_issuer=issuer,
            auth__oidc_client_id=CLIENT_ID,
            auth__oidc_client_secret_file=str(secret_file),
            auth__oidc_role_claim="groups",
            auth__oidc_admin_values=[ADMIN_GROUP],
            auth__oidc_user_values=[USER_GROUP],
            auth__oidc_display_name="Test IdP",
            **overrides,
        )
        server = HttpServer(create_app(None, archive), LOOPBACK, free_port())  # type: ignore[arg-type]
        server.start()
        servers.append(server)
        return f"http://{LOOPBACK}:{server.port}", archive

    yield factory
    for server in servers:
        server.stop()


def set_provider_user(issuer: str, sub: str, claims: dict[str, Any]) -> None:
    response = httpx.put(f"{issuer}/users/{urllib.parse.quote(sub)}", json=claims, timeout=10)
    assert response.status_code == 204


def sso_login(client: httpx.Client, sub: str) -> httpx.Response:
    """Run the authorization code flow as a browser would; return the callback's response."""
    start = client.get("/console/login/oidc")
    assert start.status_code == 302, start.text
    authorize_url = start.headers["location"]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(authorize_url).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["nonce"] and query["state"]

    # The mock provider's form: choosing a subject authorizes the client.
    authorized = client.post(authorize_url, data={"sub": sub})
    assert authorized.status_code == 302, authorized.text
    return client.get(authorized.headers["location"])


def capture_audit(archive: Archive) -> list[AuditEvent]:
    events: list[AuditEvent] = []
    archive.events.subscribe(AuditEvent, events.append)
    return events


class TestSingleSignOn:
    def test_admin_claim_gives_admin_pages(
        self, issuer: str, make_server: Callable[..., tuple[str, Archive]]
    ) -> None:
        url, archive = make_server(issuer)
        audit = capture_audit(archive)
        set_provider_user(
            issuer, "alice-sub", {"preferred_username": "alice", "groups": [ADMIN_GROUP]}
        )

        with httpx.Client(base_url=url, timeout=WEB_TIMEOUT_SECONDS) as client:
            login_page = client.get("/console/login")
            assert "Sign in with Test IdP" in login_page.text

            callback = sso_login(client, "alice-sub")
            assert callback.status_code == 200, callback.text
            assert "dicomvault_session" in client.cookies

            assert client.get(callback.url.join("/console/admin/users")).status_code == 200

        user = UserStore(archive.engine).get("alice")
        assert user is not None
        assert user.role is Role.ADMIN
        assert UserStore(archive.engine).is_external("alice")
        logins = [event for event in audit if event.actor == "alice"]
        assert [event.outcome for event in logins] == [AuditOutcome.SUCCESS]

    def test_user_claim_gives_user_role(
        self, issuer: str, make_server: Callable[..., tuple[str, Archive]]
    ) -> None:
        url, archive = make_server(issuer)
        set_provider_user(issuer, "bob-sub", {"preferred_username": "bob", "groups": USER_GROUP})

        with httpx.Client(base_url=url, timeout=WEB_TIMEOUT_SECONDS) as client:
            assert sso_login(client, "bob-sub").status_code == 200
            assert client.get("/console/search").status_code == 200
            assert client.get("/console/admin/users").status_code == 403

        user = UserStore(archive.engine).get("bob")
        assert user is not None
        assert user.role is Role.USER

    def test_unmapped_claim_rejected(
        self, issuer: str, make_server: Callable[..., tuple[str, Archive]]
    ) -> None:
        url, archive = make_server(issuer)
        audit = capture_audit(archive)
        set_provider_user(issuer, "eve-sub", {"preferred_username": "eve", "groups": ["visitors"]})

        with httpx.Client(base_url=url, timeout=WEB_TIMEOUT_SECONDS) as client:
            callback = sso_login(client, "eve-sub")
            assert callback.status_code == 403
            assert "matches no configured value" in callback.text
            assert "dicomvault_session" not in client.cookies

        assert UserStore(archive.engine).get("eve") is None
        assert [event.outcome for event in audit] == [AuditOutcome.MINOR_FAILURE]

    def test_local_user_name_not_taken_over(
        self, issuer: str, make_server: Callable[..., tuple[str, Archive]]
    ) -> None:
        url, archive = make_server(issuer)
        UserStore(archive.engine).add("carol", Role.USER, ADMIN_PASSWORD)
        set_provider_user(
            issuer, "carol-sub", {"preferred_username": "carol", "groups": [ADMIN_GROUP]}
        )

        with httpx.Client(base_url=url, timeout=WEB_TIMEOUT_SECONDS) as client:
            callback = sso_login(client, "carol-sub")
            assert callback.status_code == 403
            assert "a local user named &#39;carol&#39; exists" in callback.text

        user = UserStore(archive.engine).get("carol")
        assert user is not None
        assert user.role is Role.USER

    def test_logout_ends_session(
        self, issuer: str, make_server: Callable[..., tuple[str, Archive]]
    ) -> None:
        url, _ = make_server(issuer)
        set_provider_user(issuer, "dan-sub", {"preferred_username": "dan", "groups": [USER_GROUP]})

        with httpx.Client(base_url=url, timeout=WEB_TIMEOUT_SECONDS) as client:
            assert sso_login(client, "dan-sub").status_code == 200
            account = client.get("/api/me")
            assert account.status_code == 200
            csrf_token = account.json()["csrf_token"]
            session_id = client.cookies["dicomvault_session"]

            logout = client.post("/console/logout", data={"csrf_token": csrf_token})
            assert logout.status_code == 303
            assert logout.headers["location"] == "/console/login?logged_out=true&provider=true"
            login_page = client.get(logout.headers["location"])
            assert "Also log out at Test IdP" in login_page.text

            provider_logout = client.get("/console/login/oidc/logout")
            assert provider_logout.status_code == 303
            assert provider_logout.headers["location"].startswith(f"{issuer}/oauth2/end_session?")

            client.cookies.set("dicomvault_session", session_id)
            assert client.get("/console/search", follow_redirects=False).status_code == 303

    def test_unreachable_provider_shows_page(
        self, make_server: Callable[..., tuple[str, Archive]]
    ) -> None:
        url, _ = make_server(f"http://{LOOPBACK}:{free_port()}")

        with httpx.Client(base_url=url, timeout=WEB_TIMEOUT_SECONDS) as client:
            response = client.get("/console/login/oidc")

        assert response.status_code == 503
        assert "cannot be reached" in response.text

    def test_state_from_elsewhere_rejected(
        self, issuer: str, make_server: Callable[..., tuple[str, Archive]]
    ) -> None:
        url, _ = make_server(issuer)

        with httpx.Client(base_url=url, timeout=WEB_TIMEOUT_SECONDS) as client:
            response = client.get("/console/login/oidc/callback?code=abc&state=forged")

        assert response.status_code == 400
        assert "dicomvault_session" not in client.cookies


def fetch_id_token(issuer: str, sub: str, nonce: str) -> str:
    """Return an ID token that the provider at ``issuer`` issued to CLIENT_ID for ``sub``."""
    redirect_uri = "http://127.0.0.1:9/callback"
    with httpx.Client(timeout=10) as client:
        authorized = client.post(
            f"{issuer}/oauth2/authorize",
            params={
                "client_id": CLIENT_ID,
                "redirect_uri": redirect_uri,
                "response_type": "code",
                "scope": "openid profile",
                "state": "state",
                "nonce": nonce,
            },
            data={"sub": sub},
        )
        assert authorized.status_code == 302, authorized.text
        location = urllib.parse.urlsplit(authorized.headers["location"])
        code = urllib.parse.parse_qs(location.query)["code"][0]
        token = client.post(
            f"{issuer}/oauth2/token",
            data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri},
            auth=(CLIENT_ID, CLIENT_SECRET),
        )
        assert token.status_code == 200, token.text
        id_token: str = token.json()["id_token"]
        return id_token


class TestIdTokenValidation:
    def test_token_of_other_issuer_rejected(
        self, issuer: str, make_server: Callable[..., tuple[str, Archive]]
    ) -> None:
        _, archive = make_server(issuer)
        app_oidc = _oidc_of(archive)

        with run_provider() as other_issuer:
            foreign = fetch_id_token(other_issuer, "mallory", "n-1")
        own = fetch_id_token(issuer, "alice", "n-2")

        assert run_in_new_loop(app_oidc.validate_id_token, own, "n-2")["sub"] == "alice"
        with pytest.raises(OidcLoginError, match="The ID token is invalid"):
            run_in_new_loop(app_oidc.validate_id_token, foreign, "n-1")

    def test_wrong_nonce_rejected(
        self, issuer: str, make_server: Callable[..., tuple[str, Archive]]
    ) -> None:
        _, archive = make_server(issuer)
        app_oidc = _oidc_of(archive)
        token = fetch_id_token(issuer, "alice", "n-3")

        with pytest.raises(OidcLoginError, match="nonce"):
            run_in_new_loop(app_oidc.validate_id_token, token, "another nonce")


def run_in_new_loop(function: Callable[..., Coroutine[Any, Any, _T]], *args: Any) -> _T:
    """Run ``function(*args)`` to completion in an event loop of its own thread.

    The browser tests' Playwright keeps an event loop running in the main
    thread for the whole session, where asyncio.run() is refused. The
    coroutine is created in the worker thread, so none is left un-awaited.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        return executor.submit(lambda: asyncio.run(function(*args))).result()


def _oidc_of(archive: Archive) -> OidcLogin:
    """Return a client of the archive's provider, as the application builds it."""
    return OidcLogin(archive.settings.auth, read_client_secret(archive.settings.auth))


class TestLocalLoginTurnedOff:
    def test_password_logins_rejected(
        self, issuer: str, make_server: Callable[..., tuple[str, Archive]]
    ) -> None:
        url, archive = make_server(issuer, auth__local_login=False)
        UserStore(archive.engine).add("admin", Role.ADMIN, ADMIN_PASSWORD)
        credentials = {"name": "admin", "password": ADMIN_PASSWORD}

        with httpx.Client(base_url=url, timeout=WEB_TIMEOUT_SECONDS) as client:
            login_page = client.get("/console/login")
            assert 'name="password"' not in login_page.text
            assert "Sign in with Test IdP" in login_page.text

            console = client.post("/console/login", data=credentials)
            assert console.status_code == 403
            api = client.post("/api/login", json=credentials)
            assert api.status_code == 403
            assert "dicomvault_session" not in client.cookies

    def test_api_tokens_still_accepted(
        self, issuer: str, make_server: Callable[..., tuple[str, Archive]]
    ) -> None:
        url, archive = make_server(issuer, auth__local_login=False)
        store = UserStore(archive.engine)
        token = store.create_token(store.add("admin", Role.ADMIN, ADMIN_PASSWORD), "tests")[1]

        response = httpx.get(
            f"{url}/api/me", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )

        assert response.status_code == 200
