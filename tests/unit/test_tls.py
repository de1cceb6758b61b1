"""TLS contexts: loading errors that name the file, and handshakes in memory."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from dicomvault.dev_certs import DevCertificates, write_dev_certificates
from dicomvault.tls import (
    CERTS_HINT,
    PemFile,
    TLSFileError,
    client_context,
    load_private_key,
    server_context,
)

HANDSHAKE_STEPS = 20  # a TLS 1.3 handshake in memory takes three or four


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    return write_dev_certificates(tmp_path_factory.mktemp("certs"), [])


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    """Certificates of a second, unrelated CA."""
    return write_dev_certificates(tmp_path_factory.mktemp("other"), [])


def pem(path: Path, setting: str = "dimse.tls_cert_file") -> PemFile:
    return PemFile(str(path), setting)


def handshake(client: ssl.SSLContext, server: ssl.SSLContext, hostname: str) -> None:
    """Run a TLS handshake between two contexts through memory buffers.

    Raises
    ------
    ssl.SSLError
        If either side rejects the other.
    """
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(client_in, client_out, server_hostname=hostname)
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    client_done = server_done = False
    for _ in range(HANDSHAKE_STEPS):
        for side, outgoing, peer_in in (
            (client_side, client_out, server_in),
            (server_side, server_out, client_in),
        ):
            try:
                side.do_handshake()
                if side is client_side:
                    client_done = True
                else:
                    server_done = True
            except ssl.SSLWantReadError:
                pass
            peer_in.write(outgoing.read())
        if client_done and server_done:
            # TLS 1.3 sends the client certificate's verdict after the client
            # finishes, so exchange one record of data to see it.
            client_side.write(b"ping")
            server_in.write(client_out.read())
            assert server_side.read(4) == b"ping"
            return
    raise AssertionError(f"handshake not finished after {HANDSHAKE_STEPS} steps")


class TestServerContext:
    def test_minimum_tls_1_2(self, certs: DevCertificates) -> None:
        context = server_context(pem(certs.server_cert), pem(certs.server_key))
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2

    def test_no_client_certificate_without_ca(self, certs: DevCertificates) -> None:
        context = server_context(pem(certs.server_cert), pem(certs.server_key))
        assert context.verify_mode == ssl.CERT_NONE

    def test_optional_client_certificate_with_ca(self, certs: DevCertificates) -> None:
        context = server_context(pem(certs.server_cert), pem(certs.server_key), pem(certs.ca_cert))
        assert context.verify_mode == ssl.CERT_OPTIONAL

    def test_required_client_certificate(self, certs: DevCertificates) -> None:
        context = server_context(
            pem(certs.server_cert), pem(certs.server_key), pem(certs.ca_cert), True
        )
        assert context.verify_mode == ssl.CERT_REQUIRED

    def test_required_without_ca(self, certs: DevCertificates) -> None:
        with pytest.raises(ValueError) as excinfo:
            server_context(pem(certs.server_cert), pem(certs.server_key), None, True)
        assert str(excinfo.value) == (
            "requiring client certificates needs a CA file to verify them"
        )


class TestFileErrors:
    def test_missing_file(self, tmp_path: Path, certs: DevCertificates) -> None:
        missing = tmp_path / "nowhere.pem"
        with pytest.raises(TLSFileError) as excinfo:
            server_context(pem(missing), pem(certs.server_key))
        assert str(excinfo.value) == (
            f"The file of dimse.tls_cert_file ({missing}) does not exist; {CERTS_HINT}"
        )

    def test_folder(self, tmp_path: Path, certs: DevCertificates) -> None:
        with pytest.raises(TLSFileError) as excinfo:
            server_context(pem(tmp_path), pem(certs.server_key))
        assert str(excinfo.value) == (
            f"dimse.tls_cert_file ({tmp_path}) is a folder; it must name a PEM file"
        )

    def test_key_given_as_certificate(self, certs: DevCertificates) -> None:
        with pytest.raises(TLSFileError) as excinfo:
            server_context(pem(certs.server_key), pem(certs.server_key))
        assert str(excinfo.value) == (
            f"dimse.tls_cert_file ({certs.server_key}) contains no PEM certificate (a "
            "'-----BEGIN CERTIFICATE-----' block); it must be a certificate, not a key"
        )

    def test_certificate_given_as_key(self, certs: DevCertificates) -> None:
        key_file = pem(certs.server_cert, "dimse.tls_key_file")
        with pytest.raises(TLSFileError) as excinfo:
            server_context(pem(certs.server_cert), key_file)
        assert str(excinfo.value) == (
            f"dimse.tls_key_file ({certs.server_cert}) contains no PEM private key (a "
            "'-----BEGIN ... PRIVATE KEY-----' block)"
        )

    def test_key_of_other_certificate(self, certs: DevCertificates) -> None:
        key_file = pem(certs.client_key, "dimse.tls_key_file")
        with pytest.raises(TLSFileError) as excinfo:
            server_context(pem(certs.server_cert), key_file)
        assert str(excinfo.value) == (
            f"The private key dimse.tls_key_file ({certs.client_key}) does not belong to the "
            f"certificate dimse.tls_cert_file ({certs.server_cert}); give the key that was "
            "created with the certificate"
        )

    def test_encrypted_key(self, tmp_path: Path, certs: DevCertificates) -> None:
        key = load_private_key(pem(certs.server_key))
        encrypted = tmp_path / "encrypted.pem"
        encrypted.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret password"),
            )
        )
        with pytest.raises(TLSFileError) as excinfo:
            server_context(pem(certs.server_cert), pem(encrypted, "dimse.tls_key_file"))
        message = str(excinfo.value)
        assert message.startswith(f"dimse.tls_key_file ({encrypted}) is encrypted with a password")
        assert "secret password" not in message

    def test_folder_in_place_of_file(self, tmp_path: Path, certs: DevCertificates) -> None:
        folder = tmp_path / "server.pem"
        folder.mkdir()
        with pytest.raises(TLSFileError) as excinfo:
            server_context(pem(folder), pem(certs.server_key))
        assert str(excinfo.value) == (
            f"dimse.tls_cert_file ({folder}) is a folder; it must name a PEM file"
        )

    def test_unreadable_file(
        self, tmp_path: Path, certs: DevCertificates, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The tests run as root, which reads files of any mode, so the read
        # fails as it does for another user without permission.
        locked = tmp_path / "locked.pem"
        locked.write_bytes(certs.server_cert.read_bytes())
        original = Path.read_bytes

        def read_bytes(path: Path) -> bytes:
            if path == locked:
                raise PermissionError(13, "Permission denied")
            return original(path)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
        with pytest.raises(TLSFileError) as excinfo:
            server_context(pem(locked), pem(certs.server_key))
        assert str(excinfo.value).startswith(
            f"Cannot read dimse.tls_cert_file ({locked}): Permission denied"
        )

    def test_invalid_ca_file(self, tmp_path: Path, certs: DevCertificates) -> None:
        ca_file = tmp_path / "ca.pem"
        ca_file.write_text("not a certificate\n", encoding="ascii")
        with pytest.raises(TLSFileError) as excinfo:
            server_context(
                pem(certs.server_cert), pem(certs.server_key), pem(ca_file, "dimse.tls_ca_file")
            )
        assert str(excinfo.value).startswith(f"dimse.tls_ca_file ({ca_file}) contains no PEM")


class TestClientContext:
    def test_certificate_without_key(self, certs: DevCertificates) -> None:
        with pytest.raises(ValueError) as excinfo:
            client_context(pem(certs.ca_cert), pem(certs.client_cert), None)
        assert str(excinfo.value) == (
            "a client certificate needs its key file, and a key file its certificate"
        )

    def test_checks_host_name(self, certs: DevCertificates) -> None:
        context = client_context(pem(certs.ca_cert))
        assert context.check_hostname is True
        assert context.verify_mode == ssl.CERT_REQUIRED


class TestHandshake:
    def test_mutual_tls(self, certs: DevCertificates) -> None:
        server = server_context(
            pem(certs.server_cert), pem(certs.server_key), pem(certs.ca_cert), True
        )
        client = client_context(pem(certs.ca_cert), pem(certs.client_cert), pem(certs.client_key))
        handshake(client, server, "127.0.0.1")

    def test_server_name_checked(self, certs: DevCertificates) -> None:
        server = server_context(pem(certs.server_cert), pem(certs.server_key))
        client = client_context(pem(certs.ca_cert))
        with pytest.raises(ssl.SSLCertVerificationError) as excinfo:
            handshake(client, server, "pacs.example.org")
        assert "Hostname mismatch" in str(excinfo.value)

    def test_server_of_other_ca(self, certs: DevCertificates, other_certs: DevCertificates) -> None:
        server = server_context(pem(other_certs.server_cert), pem(other_certs.server_key))
        client = client_context(pem(certs.ca_cert))
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(client, server, "localhost")

    def test_client_without_certificate(self, certs: DevCertificates) -> None:
        server = server_context(
            pem(certs.server_cert), pem(certs.server_key), pem(certs.ca_cert), True
        )
        client = client_context(pem(certs.ca_cert))
        with pytest.raises(ssl.SSLError) as excinfo:
            handshake(client, server, "localhost")
        assert excinfo.value.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"

    def test_client_of_other_ca(self, certs: DevCertificates, other_certs: DevCertificates) -> None:
        server = server_context(
            pem(certs.server_cert), pem(certs.server_key), pem(certs.ca_cert), True
        )
        client = client_context(
            pem(certs.ca_cert), pem(other_certs.client_cert), pem(other_certs.client_key)
        )
        with pytest.raises(ssl.SSLError) as excinfo:
            handshake(client, server, "localhost")
        assert excinfo.value.reason == "CERTIFICATE_VERIFY_FAILED"
