"""Development certificates: a private CA, a server and a client certificate, as PEM files.

The certificates are for tests and for trying TLS out. The CA's private key
is not written, so no further certificate can be signed with it. Running
the command again creates a new set.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# RSA rather than ECDSA: every TLS profile of DCMTK 3.6.7 accepts RSA keys.
RSA_KEY_BITS = 2048
CA_VALID_DAYS = 3650
LEAF_VALID_DAYS = 825
DEFAULT_HOSTNAMES = ("localhost", "127.0.0.1", "::1")
CLIENT_COMMON_NAME = "dicomvault development client"
_DNS_NAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)

CA_CERT = "ca.pem"
SERVER_CERT = "server.pem"
SERVER_KEY = "server-key.pem"
CLIENT_CERT = "client.pem"
CLIENT_KEY = "client-key.pem"
FILE_NAMES = (CA_CERT, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY)
KEY_FILES = frozenset({SERVER_KEY, CLIENT_KEY})


class FilesExistError(FileExistsError):
    """Some of the files to write exist already, and overwriting was not requested."""


@dataclasses.dataclass(frozen=True)
class DevCertificates:
    """Absolute paths of the files that :func:`write_dev_certificates` wrote."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def paths(self) -> list[Path]:
        """Return every file, CA certificate first."""
        return [self.ca_cert, self.server_cert, self.server_key, self.client_cert, self.client_key]


def parse_hostnames(values: Sequence[str]) -> list[str]:
    """Return the default names followed by ``values``, validated and without repeats.

    Raises
    ------
    ValueError
        If a value is neither an IP address nor a DNS name.
    """
    names: list[str] = []
    for value in [*DEFAULT_HOSTNAMES, *values]:
        text = value.strip()
        try:
            text = str(ipaddress.ip_address(text))
        except ValueError:
            if not _DNS_NAME_RE.match(text):
                raise ValueError(
                    f"--hostname must be a DNS name such as pacs.example.org or an IP "
                    f"address, got {value!r}"
                ) from None
            text = text.lower()
        if text not in names:
            names.append(text)
    return names


def write_dev_certificates(
    out_dir: Path, hostnames: Sequence[str], force: bool = False
) -> DevCertificates:
    """Create a CA, a server and a client certificate and write them to ``out_dir``.

    The server certificate names ``localhost``, 127.0.0.1, ::1 and each of
    ``hostnames`` in its Subject Alternative Name. Private keys are
    unencrypted PEM (PKCS #8) files of mode 0600; certificates have mode 0644.

    Raises
    ------
    ValueError
        If a host name is invalid.
    FilesExistError
        If one of the files exists and ``force`` is False; then nothing is written.
    OSError
        If the folder cannot be created or a file cannot be written.
    """
    names = parse_hostnames(hostnames)
    out_dir = out_dir.expanduser().resolve()
    existing = [out_dir / name for name in FILE_NAMES if (out_dir / name).exists()]
    if existing and not force:
        raise FilesExistError(", ".join(str(path) for path in existing))
    out_dir.mkdir(parents=True, exist_ok=True)

    now = datetime.datetime.now(datetime.UTC)
    ca_key = _new_key()
    ca_cert = _ca_certificate(ca_key, now)
    server_key = _new_key()
    server_cert = _leaf_certificate(
        ca_cert, ca_key, server_key, names[0], ExtendedKeyUsageOID.SERVER_AUTH, names, now
    )
    client_key = _new_key()
    client_cert = _leaf_certificate(
        ca_cert, ca_key, client_key, CLIENT_COMMON_NAME, ExtendedKeyUsageOID.CLIENT_AUTH, [], now
    )

    contents = {
        CA_CERT: _certificate_pem(ca_cert),
        SERVER_CERT: _certificate_pem(server_cert),
        SERVER_KEY: _key_pem(server_key),
        CLIENT_CERT: _certificate_pem(client_cert),
        CLIENT_KEY: _key_pem(client_key),
    }
    for name, data in contents.items():
        _write_file(out_dir / name, data, 0o600 if name in KEY_FILES else 0o644)
    return DevCertificates(*(out_dir / name for name in FILE_NAMES))


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dicomvault development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_certificate(key: rsa.RSAPrivateKey, now: datetime.datetime) -> x509.Certificate:
    name = _name("dicomvault development CA")
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(certificate_signing=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _leaf_certificate(
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    key: rsa.RSAPrivateKey,
    common_name: str,
    usage: x509.ObjectIdentifier,
    hostnames: Sequence[str],
    now: datetime.datetime,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=LEAF_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(certificate_signing=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if hostnames:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(name) for name in hostnames]),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256())


def _key_usage(certificate_signing: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not certificate_signing,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=certificate_signing,
        crl_sign=certificate_signing,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode``, also when the file existed with another mode."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as file:
        # os.open applies the mode, less the umask, only to a new file. The
        # mode is set before the key is written, so it is never readable by others.
        os.fchmod(descriptor, mode)
        file.write(data)
