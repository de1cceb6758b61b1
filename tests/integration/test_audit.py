"""The audit trail of a real server: one entry per event, with actor, action, objects, outcome."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from tests.support.cli import run_cli
from tests.support.dcmtk import echoscu, findscu, storescu
from tests.support.network import LOOPBACK, wait_until
from tests.support.process import run_tool
from tests.support.server import DicomvaultServer, ServerFactory

pytestmark = pytest.mark.integration

CT_FILE = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
CT_STUDY = str(pydicom.dcmread(CT_FILE, stop_before_pixels=True).StudyInstanceUID)
CONFIG = """
[dimse]
allowed_calling_ae_titles = ["STORESCU", "FINDSCU", "GETSCU"]
"""
# The server writes audit events about once a second.
AUDIT_WAIT_SECONDS = 30


@pytest.fixture(scope="module")
def index_backend() -> str:
    """The audit trail's writes and queries run on both back-ends in
    tests/unit/test_audit.py.
    """
    return "sqlite"


def audit_entries(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/api/audit", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()
    return entries


def wait_for_entry(client: httpx.Client, **match: Any) -> dict[str, Any]:
    """Return the single entry whose fields equal ``match``, waiting for the writer."""
    found: list[dict[str, Any]] = []

    def present() -> bool:
        found[:] = [
            entry
            for entry in audit_entries(client)
            if all(entry.get(key) == value for key, value in match.items())
        ]
        return bool(found)

    assert wait_until(present, AUDIT_WAIT_SECONDS, interval=0.25), (match, audit_entries(client))
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def server(start_server: ServerFactory) -> DicomvaultServer:
    return start_server(config=CONFIG)


def test_each_event_kind_recorded(server: DicomvaultServer, tmp_path: Path) -> None:
    stored = storescu(server.port, [CT_FILE], server.ae_title)
    keys = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": CT_STUDY}
    found = findscu(server.port, keys, server.ae_title)
    out_dir = tmp_path / "get"
    out_dir.mkdir()
    get_keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={CT_STUDY}"]
    get_options = ["-S", "-aet", "GETSCU", "-aec", server.ae_title, "-od", str(out_dir)]
    fetched = run_tool(["getscu", *get_options, *get_keys, LOOPBACK, str(server.port)])
    rejected = echoscu(server.port, server.ae_title, calling_ae="INTRUDER")
    where = ["--data-dir", str(server.data_dir)]
    where += ["--index-url", server.index_url] if server.index_url else []
    node_cmd = ["node", "add", "PEER", "--host", LOOPBACK, "--port", "11113", *where]
    node_added = run_cli(node_cmd, tmp_path)
    base_url = f"http://{LOOPBACK}:{server.http_port}"
    with httpx.Client(base_url=base_url, timeout=30) as anonymous:
        failed_login = anonymous.post("/api/login", json={"name": "nobody", "password": "wrong"})
        qido = anonymous.get("/dicomweb/studies", params={"StudyInstanceUID": CT_STUDY})
        wado = anonymous.get(
            f"/dicomweb/studies/{CT_STUDY}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )

    assert stored.run.returncode == 0, stored.run.describe()
    assert found.status == 0, found.describe()
    assert fetched.returncode == 0, fetched.describe()
    assert rejected.returncode != 0
    assert node_added.returncode == 0, node_added.describe()
    assert failed_login.status_code == 401
    assert qido.status_code == 200
    assert wado.status_code == 200

    with server.admin_client() as client:
        token = client.post("/api/tokens", json={"name": "script"})
        assert token.status_code == 201, token.text
        revoked = client.delete(f"/api/tokens/{token.json()['id']}")
        assert revoked.status_code == 204
        searched = client.get("/api/search", params={"q": "PatientName:CT*"})
        assert searched.status_code == 200, searched.text
        added = client.post(
            "/api/users", json={"name": "carol", "role": "user", "password": "long password 1"}
        )
        assert added.status_code == 201, added.text

        store = wait_for_entry(client, event_code="110104", action="C")
        assert store["actor"] == "STORESCU"
        assert store["outcome"] == 0
        assert store["study_uids"] == [CT_STUDY]
        assert store["detail"]["instances"] == 1

        c_find = wait_for_entry(client, event_code="110112", actor="FINDSCU")
        assert c_find["action"] == "E"
        assert c_find["source"] == LOOPBACK
        assert c_find["detail"]["matches"] == 1

        c_get = wait_for_entry(client, event_code="110104", action="R", actor="GETSCU")
        assert c_get["actor"] == "GETSCU"
        assert c_get["study_uids"] == [CT_STUDY]
        assert c_get["detail"]["completed"] == 1

        refused = wait_for_entry(client, event_code="110113", actor="INTRUDER")
        assert refused["outcome"] == 4
        assert refused["description"] == (
            "Association rejected: the calling AE title is not in dimse.allowed_calling_ae_titles"
        )

        qido_entry = wait_for_entry(client, event_code="110112", actor="anonymous")
        assert qido_entry["actor_kind"] == "user"
        wado_entry = wait_for_entry(client, event_code="110104", actor="anonymous")
        assert wado_entry["action"] == "R"
        assert wado_entry["study_uids"] == [CT_STUDY]
        assert wado_entry["detail"] == {"operation": "WADO-RS"}

        bad_login = wait_for_entry(client, event_code="110114", actor="nobody")
        assert bad_login["outcome"] == 4
        good_login = wait_for_entry(client, event_code="110114", actor="testadmin")
        assert good_login["outcome"] == 0

        created = wait_for_entry(
            client, actor="testadmin", description="Added user carol with role user"
        )
        assert created["event_code"] == "110113"
        assert created["action"] == "C"
        changes = audit_entries(client, actor="testadmin", event_code="110113")
        descriptions = [entry["description"] for entry in changes]
        assert sum(text.startswith("Created API token") for text in descriptions) == 1
        assert sum(text.startswith("Revoked API token") for text in descriptions) == 1

        cli_entry = wait_for_entry(
            client, actor_kind="system", description="Added user testadmin with role admin"
        )
        assert cli_entry["action"] == "C"
        cli_node = wait_for_entry(
            client,
            actor_kind="system",
            description=f"Added node PEER @ {LOOPBACK}:11113; permissions: store,query,retrieve",
        )
        assert cli_node["event_code"] == "110113"
        console_search = wait_for_entry(client, event_code="110112", actor="testadmin")
        assert console_search["detail"]["level"] == "STUDY"

        by_study = audit_entries(client, study_uid=CT_STUDY)
        assert {entry["event_code"] for entry in by_study} == {"110104"}
        assert len(by_study) == 3  # the store, the C-GET and the WADO-RS retrieve
        failures = audit_entries(client, failures_only="true")
        assert {entry["actor"] for entry in failures} == {"INTRUDER", "nobody"}

        exported = client.get("/api/audit/export.csv")
        assert exported.status_code == 200
        assert exported.headers["content-type"].startswith("text/csv")
        lines = exported.text.splitlines()
        assert lines[0].startswith("id,occurred_at,event_code")
        assert len(lines) == len(audit_entries(client)) + 1

    assert '"event_code": "110113"' in server.log_text()


def test_audit_requires_admin(server: DicomvaultServer) -> None:
    server.add_user("viewer", "viewer password 1", role="user")
    base_url = f"http://{LOOPBACK}:{server.http_port}"
    with httpx.Client(base_url=base_url, timeout=30) as client:
        without = client.get("/api/audit")
        login = client.post("/api/login", json={"name": "viewer", "password": "viewer password 1"})
        as_user = client.get("/api/audit")

    assert without.status_code == 401
    assert login.status_code == 200
    assert as_user.status_code == 403
