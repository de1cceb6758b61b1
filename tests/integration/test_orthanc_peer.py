"""Orthanc from Debian as a peer: a C-MOVE destination, and a client that queries and retrieves.

Orthanc 1.10 listens on every interface, so these tests run it, the archive
and every client inside a network namespace that has only a loopback
interface. PostgreSQL listens outside that namespace, so the archive uses
its embedded SQLite index here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.corpus import PYDICOM_TEST_FILES
from tests.support.netns import isolated_network
from tests.support.network import LOOPBACK
from tests.support.orthanc import OrthancPeer
from tests.support.process import ToolRun, run_tool
from tests.support.scu import send_file_unchanged
from tests.support.server import DicomvaultServer, ServerFactory

pytestmark = pytest.mark.integration

ORTHANC_AE = "ORTHANC"
FILES = {
    "CT_small.dcm": "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322",
    "MR_small.dcm": "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457",
}
STUDIES = [
    "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322",
    "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457",
]


@pytest.fixture(scope="module")
def index_backend() -> str:
    """Only SQLite: PostgreSQL is not reachable from inside the namespace."""
    return "sqlite"


@pytest.fixture
def namespace() -> Iterator[str]:
    with isolated_network() as name:
        yield name


def start_archive(start_server: ServerFactory) -> DicomvaultServer:
    server = start_server()
    for name in FILES:
        rsp = send_file_unchanged(server.port, PYDICOM_TEST_FILES / name, server.ae_title)
        assert rsp.status == 0x0000, rsp.error_comment
    return server


def register_orthanc(server: DicomvaultServer, orthanc: OrthancPeer, tmp_path: Path) -> None:
    run = run_cli(
        [
            "node",
            "add",
            ORTHANC_AE,
            "--host",
            LOOPBACK,
            "--port",
            str(orthanc.dicom_port),
            "--data-dir",
            str(server.data_dir),
        ],
        tmp_path,
    )
    assert run.returncode == 0, run.describe()


def test_move_to_orthanc(namespace: str, start_server: ServerFactory, tmp_path: Path) -> None:
    server = start_archive(start_server)
    orthanc = OrthancPeer(tmp_path / "orthanc", ORTHANC_AE, {})
    try:
        register_orthanc(server, orthanc, tmp_path)

        run = run_cli(["node", "echo", ORTHANC_AE, "--data-dir", str(server.data_dir)], tmp_path)
        assert run.returncode == 0, run.describe()

        moved = _movescu(server, STUDIES)
        assert moved.returncode == 0, moved.describe()
        assert orthanc.sop_instance_uids() == set(FILES.values()), orthanc.log_text()
    finally:
        orthanc.stop()


def test_orthanc_queries_and_retrieves(
    namespace: str, start_server: ServerFactory, tmp_path: Path
) -> None:
    server = start_archive(start_server)
    orthanc = OrthancPeer(
        tmp_path / "orthanc", ORTHANC_AE, {"dicomvault": [server.ae_title, LOOPBACK, server.port]}
    )
    try:
        register_orthanc(server, orthanc, tmp_path)

        orthanc.request("POST", "/modalities/dicomvault/echo", {})
        query = orthanc.request(
            "POST",
            "/modalities/dicomvault/query",
            {
                "Level": "Study",
                "Query": {"StudyInstanceUID": "", "PatientName": "*"},
            },
        )
        answers = orthanc.request("GET", f"/queries/{query['ID']}/answers?expand")
        found = sorted(answer["0020,000d"]["Value"] for answer in answers)
        assert found == STUDIES

        orthanc.request("POST", f"/queries/{query['ID']}/retrieve", ORTHANC_AE)
        assert orthanc.sop_instance_uids() == set(FILES.values()), server.log_text()
    finally:
        orthanc.stop()


def _movescu(server: DicomvaultServer, studies: list[str]) -> ToolRun:
    return run_tool(
        [
            "movescu",
            "-S",
            "-aet",
            "MOVESCU",
            "-aec",
            server.ae_title,
            "-aem",
            ORTHANC_AE,
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyInstanceUID=" + "\\".join(studies),
            LOOPBACK,
            str(server.port),
        ]
    )
