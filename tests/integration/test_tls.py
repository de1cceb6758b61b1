"""DICOM over TLS and HTTPS, with DCMTK's tools, httpx and certificates from `certs dev`."""

from __future__ import annotations

import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.support.certs import Certificates, make_certificates
from tests.support.cli import run_cli
from tests.support.corpus import PYDICOM_TEST_FILES
from tests.support.dcmtk import echoscu, findscu, storescu, tls_options
from tests.support.network import LOOPBACK, free_port, port_accepts_connections, wait_until
from tests.support.process import ToolRun
from tests.support.server import DicomvaultServer, ServerFactory

pytestmark = pytest.mark.integration

TIMEOUT_SECONDS = 60
DESTINATION = "TLSSTORESCP"
CT_FILE = PYDICOM_TEST_FILES / "CT_small.dcm"
CT = pydicom.dcmread(CT_FILE, stop_before_pixels=True)


@pytest.fixture(scope="module")
def index_backend() -> str:
    """TLS is the same on every index back-end, so these tests run on SQLite only."""
    return "sqlite"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs") / "dev")


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """Certificates of a second CA, which the archive does not trust."""
    return make_certificates(tmp_path_factory.mktemp("certs") / "other")


def tls_config(certs: Certificates, require_client_cert: bool = True) -> str:
    return (
        "[dimse]\n"
        f'tls_cert_file = "{certs.server}"\n'
        f'tls_key_file = "{certs.server_key}"\n'
        f'tls_ca_file = "{certs.ca}"\n'
        f"tls_require_client_cert = {'true' if require_client_cert else 'false'}\n"
        "[http]\n"
        f'tls_cert_file = "{certs.server}"\n'
        f'tls_key_file = "{certs.server_key}"\n'
    )


@pytest.fixture(scope="module")
def archive(start_module_server: ServerFactory, certs: Certificates) -> DicomvaultServer:
    """An archive with a plain port, a mutual TLS port and HTTPS, holding CT_small."""
    server = start_module_server(config=tls_config(certs), tls_port=free_port())
    stored = storescu(
        server.tls_port or 0, [CT_FILE], server.ae_title, options=certs.client_options()
    )
    result = stored.results[str(CT_FILE)]
    assert result.status == 0x0000, stored.run.describe()
    return server


def node_command(server: DicomvaultServer, *args: str) -> list[str]:
    return [*args, "--data-dir", str(server.data_dir)]


def server_log_after(server: DicomvaultServer, text: str) -> bool:
    """Wait until the server log contains `text`; the server may log after the client exits."""
    return wait_until(lambda: text in server.log_text(), TIMEOUT_SECONDS)


class TestDimseOverTls:
    def test_echo_with_client_certificate(
        self, archive: DicomvaultServer, certs: Certificates
    ) -> None:
        run = echoscu(archive.tls_port or 0, archive.ae_title, options=certs.client_options())

        assert run.returncode == 0, run.describe()
        assert wait_until(
            lambda: "Association accepted from ECHOSCU" in archive.log_text(), TIMEOUT_SECONDS
        )
        assert " over TLS" in archive.log_text()

    def test_find_over_tls(self, archive: DicomvaultServer, certs: Certificates) -> None:
        found = findscu(
            archive.tls_port or 0,
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "PatientID": CT.PatientID},
            archive.ae_title,
            options=certs.client_options(),
        )

        assert found.status == 0x0000, found.describe()
        assert [str(ds.StudyInstanceUID) for ds in found.responses] == [CT.StudyInstanceUID]

    def test_plain_port_still_serves(self, archive: DicomvaultServer) -> None:
        run = echoscu(archive.port, archive.ae_title, calling_ae="PLAINSCU")

        assert run.returncode == 0, run.describe()

    def test_client_without_certificate_rejected(
        self, archive: DicomvaultServer, certs: Certificates
    ) -> None:
        options = tls_options(None, None, certs.ca)
        run = echoscu(archive.tls_port or 0, archive.ae_title, "ANONYMOUS", options)

        assert run.returncode != 0, run.describe()
        assert "Association Accepted" not in run.output
        assert server_log_after(archive, "peer did not return a certificate"), archive.describe()

    def test_client_of_other_ca_rejected(
        self, archive: DicomvaultServer, certs: Certificates, other_certs: Certificates
    ) -> None:
        # The client trusts the archive's CA but has a certificate of another CA.
        options = other_certs.client_options(ca=certs.ca)
        run = echoscu(archive.tls_port or 0, archive.ae_title, "OTHERCA", options)

        assert run.returncode != 0, run.describe()
        assert "Association Accepted" not in run.output
        assert server_log_after(archive, "not signed by a CA of dimse.tls_ca_file"), (
            archive.describe()
        )

    def test_plain_client_on_tls_port_rejected(self, archive: DicomvaultServer) -> None:
        run = echoscu(archive.tls_port or 0, archive.ae_title, "PLAINTOTLS")

        assert run.returncode != 0, run.describe()
        assert server_log_after(archive, "the client sent no TLS handshake"), archive.describe()


class Storescp:
    """DCMTK's storescp over TLS, requiring a client certificate, on a loopback port."""

    def __init__(self, out_dir: Path, certs: Certificates) -> None:
        self.port = free_port()
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = out_dir.parent / "storescp.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    "storescp",
                    "-v",
                    "-aet",
                    DESTINATION,
                    "-od",
                    str(out_dir),
                    "+tls",
                    str(certs.server_key),
                    str(certs.server),
                    "+cf",
                    str(certs.ca),
                    str(self.port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "TCP_NODELAY": "1"},
            )
        if not wait_until(lambda: port_accepts_connections(self.port), TIMEOUT_SECONDS):
            self.stop()
            raise AssertionError(f"storescp did not listen on {LOOPBACK}:{self.port}")

    def received(self) -> list[str]:
        """The SOP Instance UIDs of the received files."""
        return [
            str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            for path in sorted(self.out_dir.iterdir())
        ]

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@pytest.fixture
def tls_destination(tmp_path: Path, certs: Certificates) -> Iterator[Storescp]:
    receiver = Storescp(tmp_path / "received", certs)
    yield receiver
    receiver.stop()


def move_over_tls(server: DicomvaultServer, certs: Certificates, study_uid: str) -> Dataset:
    """Send a Study Root C-MOVE to the archive's TLS port with pynetdicom; return the final status.

    DCMTK 3.6.7's movescu has no TLS options, so pynetdicom is the SCU here.
    """
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(str(certs.client), str(certs.client_key))
    ae = AE(ae_title="MOVESCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_SECONDS
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(
        LOOPBACK, server.tls_port or 0, ae_title=server.ae_title, tls_args=(context, LOOPBACK)
    )
    assert assoc.is_established, server.describe()
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    final = None
    try:
        for status, _ in assoc.send_c_move(
            identifier, DESTINATION, StudyRootQueryRetrieveInformationModelMove
        ):
            assert status is not None and "Status" in status, "no C-MOVE response"
            if status.Status != 0xFF00:
                final = status
    finally:
        if assoc.is_established:
            assoc.release()
    assert final is not None
    return final


class TestMoveToTlsDestination:
    def test_move_delivers_over_tls(
        self,
        archive: DicomvaultServer,
        certs: Certificates,
        tls_destination: Storescp,
        tmp_path: Path,
    ) -> None:
        added = run_cli(
            node_command(
                archive,
                "node",
                "add",
                DESTINATION,
                "--host",
                LOOPBACK,
                "--port",
                str(tls_destination.port),
                "--tls",
                "--tls-ca",
                str(certs.ca),
                "--tls-cert",
                str(certs.client),
                "--tls-key",
                str(certs.client_key),
                "--replace",
            ),
            tmp_path,
        )
        assert added.returncode == 0, added.describe()
        assert added.output.strip().endswith(", TLS with client certificate")

        final = move_over_tls(archive, certs, CT.StudyInstanceUID)

        assert final.Status == 0x0000, f"{final}\nstorescp log:\n{tls_destination.log()}"
        assert final.NumberOfCompletedSuboperations == 1
        assert tls_destination.received() == [CT.SOPInstanceUID]

    def test_destination_without_client_certificate_fails(
        self,
        archive: DicomvaultServer,
        certs: Certificates,
        tls_destination: Storescp,
        tmp_path: Path,
    ) -> None:
        # storescp requires a client certificate, and this node entry has none.
        added = run_cli(
            node_command(
                archive,
                "node",
                "add",
                DESTINATION,
                "--host",
                LOOPBACK,
                "--port",
                str(tls_destination.port),
                "--tls",
                "--tls-ca",
                str(certs.ca),
                "--replace",
            ),
            tmp_path,
        )
        assert added.returncode == 0, added.describe()

        final = move_over_tls(archive, certs, CT.StudyInstanceUID)

        assert final.Status == 0xA702, final  # Refused: out of resources, sub-operations
        assert final.NumberOfFailedSuboperations == 1
        assert tls_destination.received() == []
        assert server_log_after(archive, f"cannot associate with {DESTINATION}"), archive.describe()


class TestNodeEcho:
    def register(self, server: DicomvaultServer, tmp_path: Path, *args: str) -> ToolRun:
        run = run_cli(node_command(server, "node", "add", *args, "--replace"), tmp_path)
        assert run.returncode == 0, run.describe()
        return run

    def test_echo_to_tls_node(
        self, archive: DicomvaultServer, certs: Certificates, tmp_path: Path
    ) -> None:
        # The archive's own TLS port is the node; it requires the client certificate.
        self.register(
            archive,
            tmp_path,
            "SELF",
            "--host",
            LOOPBACK,
            "--port",
            str(archive.tls_port),
            "--tls",
            "--tls-ca",
            str(certs.ca),
            "--tls-cert",
            str(certs.client),
            "--tls-key",
            str(certs.client_key),
        )

        run = run_cli(node_command(archive, "node", "echo", "SELF"), tmp_path)

        assert run.returncode == 0, run.describe()
        assert run.output.startswith(f"C-ECHO to SELF @ {LOOPBACK}:{archive.tls_port} succeeded")

    def test_echo_with_wrong_ca_fails(
        self,
        archive: DicomvaultServer,
        certs: Certificates,
        other_certs: Certificates,
        tmp_path: Path,
    ) -> None:
        self.register(
            archive,
            tmp_path,
            "WRONGCA",
            "--host",
            LOOPBACK,
            "--port",
            str(archive.tls_port),
            "--tls",
            "--tls-ca",
            str(other_certs.ca),
            "--tls-cert",
            str(certs.client),
            "--tls-key",
            str(certs.client_key),
        )

        run = run_cli(node_command(archive, "node", "echo", "WRONGCA"), tmp_path)

        assert run.returncode == 1, run.describe()
        assert "the TLS handshake failed" in run.output
        assert "Traceback" not in run.output

    def test_add_with_missing_file_rejected(
        self, archive: DicomvaultServer, tmp_path: Path
    ) -> None:
        missing = tmp_path / "missing-ca.pem"
        args = ["node", "add", "NOCA", "--host", LOOPBACK, "--port", "104", "--tls"]
        run = run_cli(node_command(archive, *args, "--tls-ca", str(missing)), tmp_path)

        assert run.returncode == 2, run.describe()
        assert run.output.startswith(
            f"Error: The file of node NOCA tls_ca_file ({missing}) does not exist"
        )

    def test_add_files_without_tls_rejected(
        self, archive: DicomvaultServer, certs: Certificates, tmp_path: Path
    ) -> None:
        args = ["node", "add", "NOTLS", "--host", LOOPBACK, "--port", "104"]
        run = run_cli(node_command(archive, *args, "--tls-ca", str(certs.ca)), tmp_path)

        assert run.returncode == 2, run.describe()
        assert run.output.strip() == "Error: Invalid node 'NOTLS': --tls-ca needs --tls set to true"


def https_client(certs: Certificates, server: DicomvaultServer) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(certs.ca))
    return httpx.Client(
        base_url=f"https://{LOOPBACK}:{server.http_port}", verify=context, timeout=TIMEOUT_SECONDS
    )


class TestHttps:
    def test_health(self, archive: DicomvaultServer, certs: Certificates) -> None:
        with https_client(certs, archive) as client:
            response = client.get("/health")

        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    def test_qido_search(self, archive: DicomvaultServer, certs: Certificates) -> None:
        with https_client(certs, archive) as client:
            response = client.get("/dicomweb/studies", params={"PatientID": CT.PatientID})

        assert response.status_code == 200, response.text
        (study,) = response.json()
        assert study["0020000D"]["Value"] == [CT.StudyInstanceUID]
        retrieve_url = study["00081190"]["Value"][0]
        assert retrieve_url.startswith(f"https://{LOOPBACK}:{archive.http_port}/dicomweb/")

    def test_forwarded_headers_ignored_by_default(
        self, archive: DicomvaultServer, certs: Certificates
    ) -> None:
        with https_client(certs, archive) as client:
            response = client.get(
                "/dicomweb/studies",
                params={"PatientID": CT.PatientID},
                headers={"X-Forwarded-Proto": "http", "X-Forwarded-For": "203.0.113.9"},
            )

        assert response.status_code == 200, response.text
        retrieve_url = response.json()[0]["00081190"]["Value"][0]
        assert retrieve_url.startswith("https://")

    def test_plain_http_fails(self, archive: DicomvaultServer, certs: Certificates) -> None:
        with (
            httpx.Client(timeout=TIMEOUT_SECONDS) as client,
            pytest.raises(httpx.TransportError),
        ):
            client.get(f"http://{LOOPBACK}:{archive.http_port}/health")

        # The server goes on serving HTTPS.
        with https_client(certs, archive) as client:
            assert client.get("/health").status_code == 200

    def test_untrusted_ca_fails(self, archive: DicomvaultServer, other_certs: Certificates) -> None:
        with https_client(other_certs, archive) as client, pytest.raises(httpx.ConnectError):
            client.get("/health")


def test_trusted_proxy_sets_scheme(start_server: ServerFactory, certs: Certificates) -> None:
    server = start_server(config='[http]\ntrusted_proxies = ["127.0.0.1"]\n')
    stored = storescu(server.port, [CT_FILE], server.ae_title)
    assert stored.results[str(CT_FILE)].status == 0x0000, stored.run.describe()

    with httpx.Client(base_url=f"http://{LOOPBACK}:{server.http_port}") as client:
        response = client.get("/dicomweb/studies", headers={"X-Forwarded-Proto": "https"})

    assert response.status_code == 200, response.text
    retrieve_url = response.json()[0]["00081190"]["Value"][0]
    assert retrieve_url.startswith(f"https://{LOOPBACK}:{server.http_port}/dicomweb/")


def test_tls_only_archive(start_server: ServerFactory, certs: Certificates) -> None:
    server = start_server(
        config=tls_config(certs, require_client_cert=False), port=0, tls_port=free_port()
    )

    # Without a client certificate: this archive does not require one.
    run = echoscu(server.tls_port or 0, server.ae_title, options=tls_options(None, None, certs.ca))

    assert run.returncode == 0, run.describe()
    assert "listening on 127.0.0.1:0" not in server.log_text()
    assert f"listening for TLS on {LOOPBACK}:{server.tls_port}" in server.log_text()


class TestStartupErrors:
    def serve(self, tmp_path: Path, config: str) -> ToolRun:
        config_path = tmp_path / "dicomvault.toml"
        config_path.write_text(config, encoding="utf-8")
        args = ["serve", "--config", str(config_path), "--data-dir", str(tmp_path / "data")]
        args += ["--port", str(free_port()), "--http-port", "0"]
        return run_cli([*args, "--tls-port", str(free_port())], tmp_path)

    def test_missing_certificate(self, tmp_path: Path, certs: Certificates) -> None:
        missing = tmp_path / "server.pem"
        config = tls_config(certs).replace(str(certs.server), str(missing))

        run = self.serve(tmp_path, config)

        assert run.returncode == 1, run.describe()
        assert (
            f"The file of dimse.tls_cert_file ({missing}) does not exist; create test "
            "certificates with 'dicomvault certs dev' or correct the path"
        ) in run.output
        assert "Traceback" not in run.output

    def test_key_of_other_certificate(self, tmp_path: Path, certs: Certificates) -> None:
        config = tls_config(certs).replace(str(certs.server_key), str(certs.client_key), 1)

        run = self.serve(tmp_path, config)

        assert run.returncode == 1, run.describe()
        assert f"The private key dimse.tls_key_file ({certs.client_key}) does not belong" in (
            run.output
        )
        assert "BEGIN PRIVATE KEY" not in run.output
        assert "Traceback" not in run.output
