"""Console pages: the set-up page, login and logout, redirects, CSRF tokens and roles."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine

from dicomvault.index.users import UserStore
from dicomvault.users import Role
from dicomvault.web.ui.rendering import safe_next_url
from tests.unit.conftest import ADMIN_PASSWORD, WEB_TIMEOUT_SECONDS

USER_PASSWORD = "user password for tests"
CSRF_FIELD_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def index_backend() -> str:
    """Run on SQLite only, because these tests exercise HTTP routes and pages.

    The index queries behind them run on both back-ends in test_index,
    test_users and test_web_search.
    """
    return "sqlite"


@pytest.fixture
def browser(server_url: str) -> Iterator[httpx.Client]:
    """A client with a cookie jar that does not follow redirects, as a browser without a login."""
    with httpx.Client(base_url=server_url, timeout=WEB_TIMEOUT_SECONDS) as http_client:
        yield http_client


@pytest.fixture
def store(migrated_engine: Engine, admin_token: str) -> UserStore:
    """The user store, with the admin and the user "viewer"."""
    users = UserStore(migrated_engine)
    users.add("viewer", Role.USER, USER_PASSWORD)
    return users


def console_login(client: httpx.Client, name: str, password: str) -> str:
    """Log in through the console form; return the CSRF token of the page that follows."""
    response = client.post("/console/login", data={"name": name, "password": password})
    assert response.status_code == 303, response.text
    page = client.get(response.headers["location"], follow_redirects=True)
    assert page.status_code == 200, page.text
    found = CSRF_FIELD_RE.search(page.text)
    assert found is not None, page.text
    return found.group(1)


class TestWithoutAdmin:
    def test_login_shows_setup(self, browser: httpx.Client) -> None:
        response = browser.get("/console/login")

        assert response.status_code == 503
        assert "No admin user exists yet" in response.text
        assert "dicomvault user add NAME --role admin" in response.text
        assert 'name="password"' not in response.text

    def test_post_login_shows_setup(self, browser: httpx.Client) -> None:
        response = browser.post("/console/login", data={"name": "a", "password": "b"})

        assert response.status_code == 503
        assert "No admin user exists yet" in response.text


class TestRedirects:
    def test_root_to_console(self, browser: httpx.Client) -> None:
        response = browser.get("/")

        assert response.status_code == 307
        assert response.headers["location"] == "/console"

    def test_page_without_login(self, browser: httpx.Client, store: UserStore) -> None:
        response = browser.get("/console/search", params={"PatientName": "DOE*"})

        location = httpx.URL(response.headers["location"])
        assert response.status_code == 303
        assert location.path == "/console/login"
        assert location.params["next"] == "/console/search?PatientName=DOE%2A"

    def test_htmx_request_without_login(self, browser: httpx.Client, store: UserStore) -> None:
        response = browser.get("/console/search", headers={"HX-Request": "true"})

        assert response.status_code == 401
        assert response.headers["hx-redirect"].startswith("/console/login?next=")

    def test_login_goes_to_next(self, browser: httpx.Client, store: UserStore) -> None:
        response = browser.post(
            "/console/login",
            data={"name": "admin", "password": ADMIN_PASSWORD, "next": "/console/search?q=1"},
        )

        assert response.status_code == 303
        assert response.headers["location"] == "/console/search?q=1"

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("", "/console"),
            ("/console/search?x=1", "/console/search?x=1"),
            ("https://example.org/console", "/console"),
            ("//example.org/console", "/console"),
            ("/api/users", "/console"),
            ("/consolefoo", "/console"),
            ("/console\\@example.org", "/console"),
        ],
    )
    def test_next_url_stays_in_console(self, value: str, expected: str) -> None:
        assert safe_next_url(value) == expected


class TestLogin:
    def test_form_shown(self, browser: httpx.Client, store: UserStore) -> None:
        response = browser.get("/console/login")

        assert response.status_code == 200
        assert '<label for="name">User name</label>' in response.text
        assert 'type="password"' in response.text
        assert "Content-Security-Policy" in response.headers

    def test_session_cookie(self, browser: httpx.Client, store: UserStore) -> None:
        response = browser.post(
            "/console/login", data={"name": "admin", "password": ADMIN_PASSWORD}
        )

        cookie = response.headers["set-cookie"]
        assert response.status_code == 303
        assert cookie.startswith("dicomvault_session=")
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert "Secure" not in cookie

    def test_wrong_password(self, browser: httpx.Client, store: UserStore) -> None:
        response = browser.post("/console/login", data={"name": "admin", "password": "wrong"})

        assert response.status_code == 401
        assert "Invalid user name or password." in response.text
        assert "set-cookie" not in response.headers

    def test_session_works_on_api(self, browser: httpx.Client, store: UserStore) -> None:
        csrf = console_login(browser, "viewer", USER_PASSWORD)

        response = browser.get("/api/me")

        assert response.json() == {"name": "viewer", "role": "user", "csrf_token": csrf}

    def test_page_carries_csrf_header(self, browser: httpx.Client, store: UserStore) -> None:
        csrf = console_login(browser, "admin", ADMIN_PASSWORD)

        page = browser.get("/console/search")

        assert f'hx-headers=\'{{"X-CSRF-Token": "{csrf}"}}\'' in page.text

    def test_logged_in_skips_form(self, browser: httpx.Client, store: UserStore) -> None:
        console_login(browser, "admin", ADMIN_PASSWORD)

        response = browser.get("/console/login", params={"next": "/console/search"})

        assert response.status_code == 303
        assert response.headers["location"] == "/console/search"


class TestLogout:
    def test_without_csrf_rejected(self, browser: httpx.Client, store: UserStore) -> None:
        console_login(browser, "admin", ADMIN_PASSWORD)

        response = browser.post("/console/logout")

        assert response.status_code == 403
        assert "without its security token" in response.text
        assert browser.get("/console/search").status_code == 200

    def test_with_form_token(self, browser: httpx.Client, store: UserStore) -> None:
        csrf = console_login(browser, "admin", ADMIN_PASSWORD)

        response = browser.post("/console/logout", data={"csrf_token": csrf})

        assert response.status_code == 303
        assert response.headers["location"] == "/console/login?logged_out=true"
        assert browser.get("/console/search").status_code == 303
        assert browser.get("/api/me").status_code == 401

    def test_with_header_token(self, browser: httpx.Client, store: UserStore) -> None:
        csrf = console_login(browser, "admin", ADMIN_PASSWORD)

        response = browser.post("/console/logout", headers={"X-CSRF-Token": csrf})

        assert response.status_code == 303


class TestNavigation:
    def test_admin_sees_management(self, browser: httpx.Client, store: UserStore) -> None:
        console_login(browser, "admin", ADMIN_PASSWORD)

        page = browser.get("/console/search").text

        assert "<summary>Management</summary>" in page
        assert 'href="/console/admin/nodes"' in page

    def test_user_sees_no_management(self, browser: httpx.Client, store: UserStore) -> None:
        console_login(browser, "viewer", USER_PASSWORD)

        page = browser.get("/console/search").text

        assert "Management" not in page
        assert "viewer" in page

    def test_static_files_served(self, browser: httpx.Client) -> None:
        htmx = browser.get("/console/static/vendor/htmx.min.js")
        css = browser.get("/console/static/console.css")

        assert htmx.status_code == 200
        assert "htmx" in htmx.text
        assert css.status_code == 200
