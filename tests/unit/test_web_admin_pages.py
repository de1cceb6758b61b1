"""Console admin pages over HTTP: rendering, forms with CSRF tokens, roles and errors."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import Engine

from dicomvault.archive import Archive
from dicomvault.audit import (
    ActorKind,
    AuditAction,
    AuditEvent,
    AuditEventType,
    AuditOutcome,
    AuditTrail,
)
from dicomvault.index.nodes import NodeRegistry
from dicomvault.index.users import UserStore
from dicomvault.ingest.manager import TaskManager
from dicomvault.nodes import RemoteNode
from dicomvault.permissions import Permission
from dicomvault.users import Role
from tests.support.datasets import encode_dataset, make_instance
from tests.support.network import LOOPBACK, free_port
from tests.unit.conftest import ADMIN_PASSWORD, WEB_TIMEOUT_SECONDS
from tests.unit.test_web_console import console_login

USER_PASSWORD = "user password for tests"
PAGES = [
    "/console/admin/service",
    "/console/admin/nodes",
    "/console/admin/tasks",
    "/console/admin/storage",
    "/console/admin/users",
    "/console/admin/events",
    "/console/admin/audit",
]
HTMX = {"HX-Request": "true"}


@pytest.fixture(scope="module")
def index_backend() -> str:
    """Run on SQLite only, because these tests exercise HTTP routes and pages.

    The index queries behind them run on both back-ends in test_index,
    test_users and test_web_search.
    """
    return "sqlite"


@pytest.fixture
def browser(server_url: str, admin_token: str) -> Iterator[httpx.Client]:
    """A client with a cookie jar, not logged in; the admin exists."""
    with httpx.Client(base_url=server_url, timeout=WEB_TIMEOUT_SECONDS) as http_client:
        yield http_client


@pytest.fixture
def admin(browser: httpx.Client) -> tuple[httpx.Client, str]:
    """The client logged in as the admin, and the session's CSRF token."""
    return browser, console_login(browser, "admin", ADMIN_PASSWORD)


class TestAccess:
    @pytest.mark.parametrize("path", PAGES)
    def test_admin_sees_page(self, admin: tuple[httpx.Client, str], path: str) -> None:
        client, _ = admin

        response = client.get(path)

        assert response.status_code == 200, response.text
        assert "<h1>" in response.text

    @pytest.mark.parametrize("path", PAGES)
    def test_without_login_redirected(self, browser: httpx.Client, path: str) -> None:
        response = browser.get(path)

        assert response.status_code == 303
        assert httpx.URL(response.headers["location"]).path == "/console/login"

    @pytest.mark.parametrize("path", PAGES)
    def test_user_role_forbidden(
        self, browser: httpx.Client, migrated_engine: Engine, path: str
    ) -> None:
        UserStore(migrated_engine).add("viewer", Role.USER, USER_PASSWORD)
        console_login(browser, "viewer", USER_PASSWORD)

        response = browser.get(path)

        assert response.status_code == 403
        assert "lacks the admin role" in response.text

    @pytest.mark.parametrize(
        "path",
        [
            "/console/admin/service",
            "/console/admin/nodes",
            "/console/admin/tasks",
            "/console/admin/users",
            "/console/admin/tokens",
            "/console/admin/delete",
        ],
    )
    def test_form_without_csrf_forbidden(self, admin: tuple[httpx.Client, str], path: str) -> None:
        client, _ = admin

        response = client.post(path, data={"name": "x"})

        assert response.status_code == 403
        assert "security token" in response.text


class TestService:
    def test_change_applies(self, admin: tuple[httpx.Client, str]) -> None:
        client, csrf = admin
        form = {
            "csrf_token": csrf,
            "ae_title": "CONSOLE",
            "host": "127.0.0.1",
            "port": "11112",
            "allowed_calling_ae_titles": "CT01, MR01",
        }

        response = client.post("/console/admin/service", data=form, headers=HTMX)
        api = client.get("/api/dimse").json()

        assert response.status_code == 200
        assert 'id="service-panel"' in response.text
        assert "<html" not in response.text
        assert api["ae_title"] == "CONSOLE"
        assert api["allowed_calling_ae_titles"] == ["CT01", "MR01"]

    def test_unknown_callers_changed(self, admin: tuple[httpx.Client, str]) -> None:
        client, csrf = admin
        form = {
            "csrf_token": csrf,
            "ae_title": "DICOMVAULT",
            "host": "127.0.0.1",
            "port": "11112",
            "unknown_callers": "reject",
        }

        response = client.post("/console/admin/service", data=form, headers=HTMX)

        assert response.status_code == 200
        assert '<dd id="service-unknown-callers">reject</dd>' in response.text
        assert client.get("/api/dimse").json()["unknown_callers"] == "reject"

    def test_invalid_unknown_callers_shown(self, admin: tuple[httpx.Client, str]) -> None:
        client, csrf = admin
        form = {
            "csrf_token": csrf,
            "ae_title": "DICOMVAULT",
            "host": "127.0.0.1",
            "port": "11112",
            "unknown_callers": "deny",
        }

        response = client.post("/console/admin/service", data=form)

        assert response.status_code == 422
        assert "&#39;dimse.unknown_callers&#39; must be accept, reject, echo" in response.text
        assert 'value="deny"' in response.text

    def test_invalid_port_shown(self, admin: tuple[httpx.Client, str]) -> None:
        client, csrf = admin
        form = {"csrf_token": csrf, "ae_title": "A", "host": "127.0.0.1", "port": "99999"}

        response = client.post("/console/admin/service", data=form)

        assert response.status_code == 422
        assert "&#39;dimse.port&#39; must be an integer from 0 to 65535, got 99999" in response.text


class TestNodes:
    def test_add_and_remove(self, admin: tuple[httpx.Client, str], migrated_engine: Engine) -> None:
        client, csrf = admin
        form = {"csrf_token": csrf, "ae_title": "PEER", "host": LOOPBACK, "port": "104"}

        added = client.post("/console/admin/nodes", data=form, headers=HTMX)
        removed = client.post(
            "/console/admin/nodes/PEER/remove", data={"csrf_token": csrf}, headers=HTMX
        )

        assert "Registered PEER @ 127.0.0.1:104." in added.text
        assert 'data-ae-title="PEER"' in added.text
        assert "Removed PEER." in removed.text
        assert NodeRegistry(migrated_engine).list() == []

    def test_add_with_access(
        self, admin: tuple[httpx.Client, str], migrated_engine: Engine
    ) -> None:
        client, csrf = admin
        form = {
            "csrf_token": csrf,
            "ae_title": "CT01",
            "host": LOOPBACK,
            "port": "104",
            "permissions": ["store"],
            "source_addresses": "10.0.0.5, 10.0.1.0/24",
            "tls_client_subject": "CN=ct01.example.org",
        }

        response = client.post("/console/admin/nodes", data=form, headers=HTMX)

        assert response.status_code == 200
        assert "from 10.0.0.5, 10.0.1.0/24" in response.text
        assert "certificate CN=ct01.example.org" in response.text
        node = NodeRegistry(migrated_engine).get("CT01")
        assert node is not None
        assert node.permissions == frozenset({Permission.STORE})
        assert node.source_addresses == ("10.0.0.5", "10.0.1.0/24")

    def test_change_permissions(
        self, admin: tuple[httpx.Client, str], migrated_engine: Engine
    ) -> None:
        client, csrf = admin
        registry = NodeRegistry(migrated_engine)
        registry.add(RemoteNode("CT01", LOOPBACK, 104, "scanner", source_addresses=("10.0.0.5",)))
        form = {"csrf_token": csrf, "permissions": ["query", "retrieve"]}

        response = client.post("/console/admin/nodes/CT01/permissions", data=form, headers=HTMX)

        assert response.status_code == 200
        assert "Permissions of CT01: query,retrieve." in response.text
        node = registry.get("CT01")
        assert node == RemoteNode(
            "CT01",
            LOOPBACK,
            104,
            "scanner",
            permissions=frozenset({Permission.QUERY, Permission.RETRIEVE}),
            source_addresses=("10.0.0.5",),
        )

    def test_remove_every_permission(
        self, admin: tuple[httpx.Client, str], migrated_engine: Engine
    ) -> None:
        client, csrf = admin
        registry = NodeRegistry(migrated_engine)
        registry.add(RemoteNode("CT01", LOOPBACK, 104))

        response = client.post(
            "/console/admin/nodes/CT01/permissions", data={"csrf_token": csrf}, headers=HTMX
        )

        assert "Permissions of CT01: none." in response.text
        node = registry.get("CT01")
        assert node is not None
        assert node.permissions == frozenset()

    def test_invalid_permission_shown(
        self, admin: tuple[httpx.Client, str], migrated_engine: Engine
    ) -> None:
        client, csrf = admin
        NodeRegistry(migrated_engine).add(RemoteNode("CT01", LOOPBACK, 104))
        form = {"csrf_token": csrf, "permissions": ["delete"]}

        response = client.post("/console/admin/nodes/CT01/permissions", data=form)

        assert response.status_code == 422
        assert "Invalid permissions of CT01: &#39;permissions&#39; must contain only" in (
            response.text
        )

    def test_invalid_node_shown(self, admin: tuple[httpx.Client, str]) -> None:
        client, csrf = admin
        form = {"csrf_token": csrf, "ae_title": "PEER", "host": LOOPBACK, "port": "abc"}

        response = client.post("/console/admin/nodes", data=form)

        assert response.status_code == 422
        assert "must be an integer from 1 to 65535" in response.text

    @pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
    def test_echo_of_node_down(
        self, admin: tuple[httpx.Client, str], migrated_engine: Engine
    ) -> None:
        # The warning filter is for pynetdicom 3.0.4, which leaves the socket of
        # a refused connection to the garbage collector.
        client, csrf = admin
        NodeRegistry(migrated_engine).add(RemoteNode("DOWN", LOOPBACK, free_port()))

        response = client.post("/console/admin/nodes/DOWN/echo", headers={"X-CSRF-Token": csrf})

        assert response.status_code == 200
        assert 'class="echo-failed"' in response.text
        assert "no association: the connection was refused" in response.text


class TestTasks:
    def test_start_outside_roots(self, admin: tuple[httpx.Client, str], tmp_path: Path) -> None:
        client, csrf = admin

        response = client.post(
            "/console/admin/tasks", data={"csrf_token": csrf, "path": str(tmp_path)}
        )

        assert response.status_code == 403
        assert "import root" in response.text

    def test_start_and_list(self, admin: tuple[httpx.Client, str], root: Path) -> None:
        client, csrf = admin

        started = client.post(
            "/console/admin/tasks",
            data={"csrf_token": csrf, "path": str(root), "mode": "in_place"},
            headers=HTMX,
        )
        listed = client.get("/console/admin/tasks/list", headers=HTMX)

        assert started.status_code == 200
        assert re.search(r"Task \d+ queued for ", started.text)
        assert 'id="tasks-list"' in listed.text
        assert str(root) in listed.text


class TestUsers:
    def test_create_user_and_token(
        self, admin: tuple[httpx.Client, str], migrated_engine: Engine
    ) -> None:
        client, csrf = admin
        form = {"csrf_token": csrf, "name": "carol", "role": "user", "password": USER_PASSWORD}

        created = client.post("/console/admin/users", data=form, headers=HTMX)
        token = client.post(
            "/console/admin/tokens", data={"csrf_token": csrf, "name": "script"}, headers=HTMX
        )

        assert "Created user carol (user)." in created.text
        user = UserStore(migrated_engine).get("carol")
        assert user is not None
        assert user.role is Role.USER
        shown = re.search(r'id="new-token-value">([^<]+)<', token.text)
        assert shown is not None
        assert UserStore(migrated_engine).user_of_token(shown.group(1)) is not None

    def test_short_password_shown(self, admin: tuple[httpx.Client, str]) -> None:
        client, csrf = admin
        form = {"csrf_token": csrf, "name": "carol", "role": "user", "password": "short"}

        response = client.post("/console/admin/users", data=form)

        assert response.status_code == 422
        assert "10 characters" in response.text


class TestDelete:
    def test_confirm_then_delete(
        self, admin: tuple[httpx.Client, str], manager: TaskManager
    ) -> None:
        client, csrf = admin
        context = manager.context
        archive = Archive(context.settings, context.engine, context.storage)
        ds = make_instance(PatientName="Doe^Jane")
        archive.store(encode_dataset(ds), ExplicitVRLittleEndian)
        uids = {"study": ds.StudyInstanceUID, "series": ds.SeriesInstanceUID}

        confirm = client.get("/console/admin/delete", params=uids)
        deleted = client.post("/console/admin/delete", data={"csrf_token": csrf, **uids})

        assert confirm.status_code == 200
        assert "Doe^Jane" in confirm.text
        assert 'id="delete-count">1<' in confirm.text
        assert deleted.status_code == 200
        assert "1 stored files were deleted" in deleted.text
        assert client.get("/console/admin/delete", params=uids).status_code == 404

    def test_malformed_uid(self, admin: tuple[httpx.Client, str]) -> None:
        client, _ = admin

        response = client.get("/console/admin/delete", params={"study": "abc"})

        assert response.status_code == 400
        assert "Invalid Study Instance UID" in response.text


class TestAuditTrail:
    def test_events_listed_and_filtered(
        self, admin: tuple[httpx.Client, str], migrated_engine: Engine
    ) -> None:
        client, _ = admin
        trail = AuditTrail(migrated_engine)
        for actor, outcome in (
            ("MODALITY", AuditOutcome.SUCCESS),
            ("INTRUDER", AuditOutcome.MINOR_FAILURE),
        ):
            trail.record(
                AuditEvent(
                    AuditEventType.SECURITY_ALERT,
                    AuditAction.EXECUTE,
                    outcome,
                    actor=actor,
                    actor_kind=ActorKind.NODE,
                    description=f"Association of {actor}",
                )
            )

        everything = client.get("/console/admin/audit")
        failures = client.get("/console/admin/audit", params={"failures": "true"}, headers=HTMX)

        assert everything.status_code == 200
        assert "Association of MODALITY" in everything.text
        assert "Association of INTRUDER" in everything.text
        assert "/api/audit/export.csv" in everything.text
        assert "Association of INTRUDER" in failures.text
        assert "Association of MODALITY" not in failures.text
