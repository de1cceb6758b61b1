"""Node access control with DCMTK's tools: permission refusals, pins, and unknown callers.

One archive serves every test: it rejects unknown callers, and its
configuration file registers one node per case. CT_small is stored by a node
with only the store permission, so that a query or retrieve can match it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from tests.support.certs import Certificates, make_certificates
from tests.support.cli import run_cli
from tests.support.corpus import PYDICOM_TEST_FILES
from tests.support.dcmtk import echoscu, findscu, storescu
from tests.support.network import LOOPBACK, free_port, wait_until
from tests.support.process import ToolRun, run_tool
from tests.support.server import DicomvaultServer, ServerFactory

pytestmark = pytest.mark.integration

CT_FILE = PYDICOM_TEST_FILES / "CT_small.dcm"
CT_STUDY = str(pydicom.dcmread(CT_FILE, stop_before_pixels=True).StudyInstanceUID)
NOT_AUTHORIZED = 0x0124
# The subject of the client certificate that `dicomvault certs dev` writes.
DEV_CLIENT_SUBJECT = "CN=dicomvault development client"
# TEST-NET-1 (RFC 5737): only compared with the caller's address, never contacted.
FOREIGN_ADDRESS = "192.0.2.10"
# The server writes audit events about once a second.
AUDIT_WAIT_SECONDS = 30
_STATUS_RE = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")
_ERROR_COMMENT_RE = re.compile(r"\(0000,0902\) LO \[(.*)\]\s+#")


@pytest.fixture(scope="module")
def index_backend() -> str:
    """Access decisions read one registry row per association, so SQLite is enough here."""
    return "sqlite"


def node_table(ae_title: str, **fields: Any) -> str:
    lines = [f"[nodes.{ae_title}]", f'host = "{LOOPBACK}"', "port = 104"]
    for key, value in fields.items():
        if isinstance(value, list):
            items = ", ".join(f'"{item}"' for item in value)
            lines.append(f"{key} = [{items}]")
        else:
            lines.append(f'{key} = "{value}"')
    return "\n".join(lines) + "\n"


def access_config(certs: Certificates, tls_port: int) -> str:
    # The TLS port is in the file too, so that `dicomvault user add` with this file accepts it.
    return (
        "[dimse]\n"
        'unknown_callers = "reject"\n'
        f"tls_port = {tls_port}\n"
        f'tls_cert_file = "{certs.server}"\n'
        f'tls_key_file = "{certs.server_key}"\n'
        f'tls_ca_file = "{certs.ca}"\n'
        + node_table("STOREONLY", permissions=["store"], source_addresses=["127.0.0.0/8"])
        + node_table("QUERYONLY", permissions=["query"])
        + node_table("ECHOONLY", permissions=[])
        + node_table("FARAWAY", source_addresses=[FOREIGN_ADDRESS])
        + node_table("CERTOK", tls_client_subject=DEV_CLIENT_SUBJECT)
        + node_table("CERTOTHER", tls_client_subject="CN=ct01.example.org")
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs") / "dev")


@pytest.fixture(scope="module")
def archive(start_module_server: ServerFactory, certs: Certificates) -> DicomvaultServer:
    """The archive with the nodes of :func:`access_config`, holding CT_small."""
    tls_port = free_port()
    server = start_module_server(config=access_config(certs, tls_port), tls_port=tls_port)
    stored = storescu(server.port, [CT_FILE], server.ae_title, calling_ae="STOREONLY")
    assert stored.results[str(CT_FILE)].status == 0x0000, stored.run.describe()
    return server


@pytest.fixture(scope="module")
def admin(archive: DicomvaultServer) -> Iterator[httpx.Client]:
    """An HTTP client of the archive, logged in as an admin."""
    with archive.admin_client() as client:
        yield client


def unpadded(error_comment: str | None) -> str | None:
    """Return an Error Comment without the space that pads an LO value of odd length."""
    return None if error_comment is None else error_comment.rstrip(" ")


def final_status(run: ToolRun) -> tuple[int | None, str | None]:
    """Return the last DIMSE status and Error Comment that a DCMTK tool run with -d printed."""
    statuses = _STATUS_RE.findall(run.output)
    comments = _ERROR_COMMENT_RE.findall(run.output)
    status = int(statuses[-1], 16) if statuses else None
    return status, unpadded(comments[-1]) if comments else None


def retrieve(tool: str, server: DicomvaultServer, calling_ae: str, out_dir: Path) -> ToolRun:
    """Run movescu (to an unregistered destination) or getscu for the study of CT_small."""
    args = [tool, "-d", "-S", "-aet", calling_ae, "-aec", server.ae_title]
    if tool == "movescu":
        args += ["-aem", "NOWHERE"]
    else:
        args += ["-od", str(out_dir)]
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={CT_STUDY}"]
    return run_tool([*args, *keys, LOOPBACK, str(server.port)])


def rejected(run: ToolRun) -> bool:
    """Return whether a DCMTK tool's association was rejected for its calling AE title."""
    return run.returncode != 0 and "Reason: Calling AE Title Not Recognized" in run.output


def server_log_after(server: DicomvaultServer, text: str) -> bool:
    """Wait until the server log contains `text`; the server may log after the client exits."""
    return wait_until(lambda: text in server.log_text(), AUDIT_WAIT_SECONDS)


class TestPermissions:
    def test_find_without_query_permission(self, archive: DicomvaultServer) -> None:
        keys = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": CT_STUDY}

        found = findscu(archive.port, keys, archive.ae_title, calling_ae="STOREONLY")

        assert found.status == NOT_AUTHORIZED, found.describe()
        assert unpadded(found.error_comment) == "STOREONLY lacks the query permission for C-FIND"
        assert found.responses == []
        assert server_log_after(
            archive,
            "C-FIND from STOREONLY @ 127.0.0.1 refused with 0x0124: the registered node "
            "lacks the query permission",
        ), archive.describe()

    def test_find_with_query_permission(self, archive: DicomvaultServer) -> None:
        keys = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": CT_STUDY}

        found = findscu(archive.port, keys, archive.ae_title, calling_ae="QUERYONLY")

        assert found.status == 0x0000, found.describe()
        assert [str(ds.StudyInstanceUID) for ds in found.responses] == [CT_STUDY]

    def test_store_without_store_permission(self, archive: DicomvaultServer) -> None:
        stored = storescu(archive.port, [CT_FILE], archive.ae_title, calling_ae="QUERYONLY")

        result = stored.results[str(CT_FILE)]
        assert result.status == NOT_AUTHORIZED, stored.run.describe()
        assert unpadded(result.error_comment) == "QUERYONLY lacks the store permission for C-STORE"

    @pytest.mark.parametrize("tool", ["movescu", "getscu"])
    def test_retrieve_without_retrieve_permission(
        self, archive: DicomvaultServer, tool: str, tmp_path: Path
    ) -> None:
        run = retrieve(tool, archive, "STOREONLY", tmp_path)

        operation = "C-MOVE" if tool == "movescu" else "C-GET"
        assert final_status(run) == (
            NOT_AUTHORIZED,
            f"STOREONLY lacks the retrieve permission for {operation}",
        ), run.describe()
        assert list(tmp_path.iterdir()) == []

    def test_echo_without_any_permission(self, archive: DicomvaultServer) -> None:
        run = echoscu(archive.port, archive.ae_title, calling_ae="ECHOONLY")

        assert run.returncode == 0, run.describe()

    def test_cli_change_applies_without_restart(
        self, archive: DicomvaultServer, tmp_path: Path
    ) -> None:
        refused = storescu(archive.port, [CT_FILE], archive.ae_title, calling_ae="ECHOONLY")
        allowed = run_cli(
            ["node", "allow", "ECHOONLY", "store", "--data-dir", str(archive.data_dir)], tmp_path
        )
        stored = storescu(archive.port, [CT_FILE], archive.ae_title, calling_ae="ECHOONLY")
        restored = run_cli(
            ["node", "allow", "ECHOONLY", "none", "--data-dir", str(archive.data_dir)], tmp_path
        )

        assert refused.results[str(CT_FILE)].status == NOT_AUTHORIZED, refused.run.describe()
        assert allowed.returncode == 0, allowed.describe()
        assert allowed.output.strip() == "ECHOONLY may use: store (and C-ECHO)"
        assert stored.results[str(CT_FILE)].status == 0x0000, stored.run.describe()
        assert restored.returncode == 0, restored.describe()


class TestUnknownCallers:
    def test_rejected_and_audited(self, archive: DicomvaultServer, admin: httpx.Client) -> None:
        run = echoscu(archive.port, archive.ae_title, calling_ae="STRANGER")

        assert rejected(run), run.describe()
        entries: list[dict[str, Any]] = []

        def recorded() -> bool:
            response = admin.get("/api/audit", params={"actor": "STRANGER"})
            entries[:] = response.json()
            return bool(entries)

        assert wait_until(recorded, AUDIT_WAIT_SECONDS, interval=0.25), archive.describe()
        assert entries[0]["event_code"] == "110113"
        assert entries[0]["outcome"] == 4
        assert entries[0]["source"] == LOOPBACK
        assert entries[0]["description"] == (
            "Association rejected: calling AE title STRANGER is not a registered node, "
            "and dimse.unknown_callers is reject"
        )

    def test_policy_change_applies_without_restart(
        self, archive: DicomvaultServer, admin: httpx.Client
    ) -> None:
        changed = admin.patch("/api/dimse", json={"unknown_callers": "echo"})
        try:
            echoed = echoscu(archive.port, archive.ae_title, calling_ae="STRANGER")
            stored = storescu(archive.port, [CT_FILE], archive.ae_title, "STRANGER")
        finally:
            reset = admin.delete("/api/dimse/saved")

        assert changed.status_code == 200, changed.text
        assert echoed.returncode == 0, echoed.describe()
        result = stored.results[str(CT_FILE)]
        assert result.status == NOT_AUTHORIZED, stored.run.describe()
        assert unpadded(result.error_comment) == "STRANGER lacks the store permission for C-STORE"
        assert reset.json()["unknown_callers"] == "reject"


class TestPins:
    def test_other_source_address_rejected(self, archive: DicomvaultServer) -> None:
        run = echoscu(archive.port, archive.ae_title, calling_ae="FARAWAY")

        assert rejected(run), run.describe()
        assert server_log_after(
            archive,
            f"FARAWAY called from 127.0.0.1, which is not among the node's source addresses "
            f"({FOREIGN_ADDRESS})",
        ), archive.describe()

    def test_certificate_subject_matched(
        self, archive: DicomvaultServer, certs: Certificates
    ) -> None:
        run = echoscu(
            archive.tls_port or 0, archive.ae_title, "CERTOK", options=certs.client_options()
        )

        assert run.returncode == 0, run.describe()

    def test_other_certificate_subject_rejected(
        self, archive: DicomvaultServer, certs: Certificates
    ) -> None:
        run = echoscu(
            archive.tls_port or 0, archive.ae_title, "CERTOTHER", options=certs.client_options()
        )

        assert rejected(run), run.describe()
        assert server_log_after(
            archive,
            "CERTOTHER presented a TLS client certificate with subject "
            "CN=dicomvault development client,O=dicomvault development, which does not "
            "contain the node's subject CN=ct01.example.org",
        ), archive.describe()

    def test_certificate_required_over_plain_port(self, archive: DicomvaultServer) -> None:
        run = echoscu(archive.port, archive.ae_title, calling_ae="CERTOK")

        assert rejected(run), run.describe()
        assert server_log_after(
            archive,
            f"CERTOK must present a TLS client certificate with subject {DEV_CLIENT_SUBJECT}, "
            "but the association has no client certificate",
        ), archive.describe()
