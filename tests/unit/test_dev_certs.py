"""Development certificates: files, modes, names, and existing files kept."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from dicomvault.dev_certs import (
    FILE_NAMES,
    DevCertificates,
    FilesExistError,
    parse_hostnames,
    write_dev_certificates,
)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    return write_dev_certificates(
        tmp_path_factory.mktemp("certs"), ["pacs.example.org", "10.1.2.3"]
    )


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


class TestFiles:
    def test_all_written(self, written: DevCertificates) -> None:
        assert sorted(path.name for path in written.paths()) == sorted(FILE_NAMES)

    @pytest.mark.parametrize("name", ["server_key", "client_key"])
    def test_key_mode_0600(self, written: DevCertificates, name: str) -> None:
        mode = stat.S_IMODE(getattr(written, name).stat().st_mode)
        assert mode == 0o600

    @pytest.mark.parametrize("name", ["ca_cert", "server_cert", "client_cert"])
    def test_certificate_mode_0644(self, written: DevCertificates, name: str) -> None:
        mode = stat.S_IMODE(getattr(written, name).stat().st_mode)
        assert mode == 0o644

    def test_keys_unencrypted_pem(self, written: DevCertificates) -> None:
        text = written.server_key.read_text(encoding="ascii")
        assert text.startswith("-----BEGIN PRIVATE KEY-----")

    def test_existing_files_kept(self, tmp_path: Path) -> None:
        (tmp_path / "server.pem").write_text("mine", encoding="ascii")

        with pytest.raises(FilesExistError) as excinfo:
            write_dev_certificates(tmp_path, [])
        assert str(excinfo.value) == str(tmp_path / "server.pem")
        assert (tmp_path / "server.pem").read_text(encoding="ascii") == "mine"
        assert not (tmp_path / "ca.pem").exists()

    def test_force_replaces_and_restricts_key(self, tmp_path: Path) -> None:
        key = tmp_path / "server-key.pem"
        key.write_text("old", encoding="ascii")
        key.chmod(0o644)

        write_dev_certificates(tmp_path, [], force=True)

        assert key.read_text(encoding="ascii").startswith("-----BEGIN PRIVATE KEY-----")
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


class TestCertificates:
    def test_server_names(self, written: DevCertificates) -> None:
        names = load(written.server_cert).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        assert names.value.get_values_for_type(x509.DNSName) == ["localhost", "pacs.example.org"]
        assert names.value.get_values_for_type(x509.IPAddress) == [
            ipaddress.ip_address("127.0.0.1"),
            ipaddress.ip_address("::1"),
            ipaddress.ip_address("10.1.2.3"),
        ]

    def test_server_usage(self, written: DevCertificates) -> None:
        usage = load(written.server_cert).extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        assert list(usage.value) == [ExtendedKeyUsageOID.SERVER_AUTH]

    def test_client_usage(self, written: DevCertificates) -> None:
        usage = load(written.client_cert).extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        assert list(usage.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]

    @pytest.mark.parametrize("name", ["server_cert", "client_cert"])
    def test_signed_by_ca(self, written: DevCertificates, name: str) -> None:
        certificate = load(getattr(written, name))
        certificate.verify_directly_issued_by(load(written.ca_cert))

    def test_ca_constraints(self, written: DevCertificates) -> None:
        constraints = load(written.ca_cert).extensions.get_extension_for_class(
            x509.BasicConstraints
        )
        assert constraints.value.ca is True
        assert constraints.critical is True


class TestHostnames:
    def test_defaults_first_without_repeats(self) -> None:
        assert parse_hostnames(["LOCALHOST", "127.0.0.1", "pacs"]) == [
            "localhost",
            "127.0.0.1",
            "::1",
            "pacs",
        ]

    @pytest.mark.parametrize("value", ["bad host", "-pacs", "pacs..org", ""])
    def test_invalid(self, value: str) -> None:
        with pytest.raises(ValueError) as excinfo:
            parse_hostnames([value])
        assert str(excinfo.value) == (
            "--hostname must be a DNS name such as pacs.example.org or an IP address, "
            f"got {value!r}"
        )
