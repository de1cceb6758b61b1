"""TLS contexts for DIMSE and HTTP, built from PEM files, with errors that name each file.

Every context requires TLS 1.2 or newer and keeps the default cipher suites
of Python's ``ssl`` module. With Python 3.11 and OpenSSL 3.0 these are, for
TLS 1.2, only suites with forward secrecy (ECDHE or DHE key exchange) and
AES-GCM, ChaCha20-Poly1305 or AES-CBC with SHA-2.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import ssl
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

LOGGER = logging.getLogger(__name__)

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
CERTS_HINT = "create test certificates with 'dicomvault certs dev' or correct the path"

ContextT = TypeVar("ContextT", bound=ssl.SSLContext)


class TLSFileError(ValueError):
    """A certificate, private key or CA file is missing, unreadable or invalid."""


@dataclasses.dataclass(frozen=True)
class PemFile:
    """A PEM file and the setting or option that names it, for error messages."""

    path: str
    setting: str

    def describe(self) -> str:
        """Return "setting (path)" for messages."""
        return f"{self.setting} ({self.path})"


def read_pem(file: PemFile) -> bytes:
    """Return the bytes of ``file``.

    Raises
    ------
    TLSFileError
        If the file does not exist, is a folder or cannot be read.
    """
    path = Path(file.path).expanduser()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TLSFileError(f"The file of {file.describe()} does not exist; {CERTS_HINT}") from None
    except IsADirectoryError:
        raise TLSFileError(f"{file.describe()} is a folder; it must name a PEM file") from None
    except OSError as exc:
        raise TLSFileError(
            f"Cannot read {file.describe()}: {exc.strerror or exc}; check the file's "
            "permissions for the user that runs dicomvault"
        ) from None


def load_certificates(file: PemFile) -> list[x509.Certificate]:
    """Parse every certificate of a PEM file, first one first.

    Raises
    ------
    TLSFileError
        If the file cannot be read or contains no valid PEM certificate.
    """
    data = read_pem(file)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSFileError(
            f"{file.describe()} contains no PEM certificate (a '-----BEGIN CERTIFICATE-----' "
            "block); it must be a certificate, not a key"
        )
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TLSFileError(f"{file.describe()} has an invalid PEM certificate: {exc}") from None


def load_private_key(file: PemFile) -> PrivateKeyTypes:
    """Parse the unencrypted private key of a PEM file.

    Raises
    ------
    TLSFileError
        If the file cannot be read, contains no valid PEM private key, or the
        key is encrypted (dicomvault has no setting for a key password).
    """
    data = read_pem(file)
    if b"PRIVATE KEY-----" not in data:
        raise TLSFileError(
            f"{file.describe()} contains no PEM private key (a '-----BEGIN ... PRIVATE "
            "KEY-----' block)"
        )
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSFileError(
            f"{file.describe()} is encrypted with a password; dicomvault reads only "
            "unencrypted keys, so store the key without a password and readable only by "
            "the user that runs dicomvault (mode 0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TLSFileError(f"{file.describe()} has an invalid PEM private key: {exc}") from None


def check_key_pair(cert_file: PemFile, key_file: PemFile) -> None:
    """Check that a certificate file and a key file belong together.

    Logs a warning when the certificate has expired or is not valid yet,
    because peers then reject it, but a clock set wrong should not stop the
    archive.

    Raises
    ------
    TLSFileError
        If a file is invalid, or the key is not the certificate's key.
    """
    certificate = load_certificates(cert_file)[0]
    key = load_private_key(key_file)
    if _public_key_bytes(key.public_key()) != _public_key_bytes(certificate.public_key()):
        raise TLSFileError(
            f"The private key {key_file.describe()} does not belong to the certificate "
            f"{cert_file.describe()}; give the key that was created with the certificate"
        )
    now = datetime.datetime.now(datetime.UTC)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        LOGGER.warning(
            "The certificate %s is valid only from %s to %s; peers will reject it",
            cert_file.describe(),
            certificate.not_valid_before_utc.isoformat(),
            certificate.not_valid_after_utc.isoformat(),
        )


def server_context(
    cert_file: PemFile,
    key_file: PemFile,
    ca_file: PemFile | None = None,
    require_client_cert: bool = False,
    context_class: type[ContextT] = ssl.SSLContext,  # type: ignore[assignment]
) -> ContextT:
    """Build the context of a TLS server.

    Parameters
    ----------
    cert_file, key_file : PemFile
        The server's certificate (followed by any intermediate CA
        certificates) and its unencrypted private key.
    ca_file : PemFile, optional
        CA certificates that client certificates must chain to. A client
        that sends a certificate not signed by them is rejected. Without a
        CA file the server requests no client certificate.
    require_client_cert : bool
        Reject clients that send no certificate; needs ``ca_file``.
    context_class : type
        ``ssl.SSLContext`` or a subclass of it to instantiate.

    Raises
    ------
    TLSFileError
        If a file is missing, unreadable or invalid, or the key does not
        belong to the certificate.
    ValueError
        If ``require_client_cert`` is set without ``ca_file``.
    """
    if require_client_cert and ca_file is None:
        raise ValueError("requiring client certificates needs a CA file to verify them")
    check_key_pair(cert_file, key_file)

    context = context_class(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    _load_chain(context, cert_file, key_file)
    if ca_file is not None:
        _load_ca(context, ca_file)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(
    ca_file: PemFile | None = None,
    cert_file: PemFile | None = None,
    key_file: PemFile | None = None,
) -> ssl.SSLContext:
    """Build the context of a TLS client that verifies the server's certificate and host name.

    Parameters
    ----------
    ca_file : PemFile, optional
        CA certificates the server's certificate must chain to; without
        one, the system's trusted CA certificates.
    cert_file, key_file : PemFile, optional
        The client certificate and its key, sent to servers that ask for
        one (mutual TLS). Give both or neither.

    Raises
    ------
    TLSFileError
        If a file is missing, unreadable or invalid, or the key does not
        belong to the certificate.
    ValueError
        If only one of ``cert_file`` and ``key_file`` is given.
    """
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs its key file, and a key file its certificate")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificate and host name
    context.minimum_version = MINIMUM_VERSION
    if ca_file is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _load_ca(context, ca_file)
    if cert_file is not None and key_file is not None:
        check_key_pair(cert_file, key_file)
        _load_chain(context, cert_file, key_file)
    return context


def describe_peer_certificate(sock: ssl.SSLSocket) -> str:
    """Return the subject of the peer's verified certificate, or "no certificate"."""
    certificate: dict[str, Any] | None = sock.getpeercert()
    if not certificate:
        return "no certificate"
    parts = [
        f"{name}={value}"
        for relative_name in certificate.get("subject", ())
        for name, value in relative_name
    ]
    return ", ".join(parts) or "a certificate without subject"


def _public_key_bytes(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _load_chain(context: ssl.SSLContext, cert_file: PemFile, key_file: PemFile) -> None:
    try:
        context.load_cert_chain(
            str(Path(cert_file.path).expanduser()),
            str(Path(key_file.path).expanduser()),
            password=_reject_password,
        )
    except (ssl.SSLError, OSError) as exc:
        # The files passed check_key_pair; OpenSSL may still reject, for
        # example, a key too weak for its security level.
        raise TLSFileError(
            f"OpenSSL rejected {cert_file.describe()} with {key_file.describe()}: {exc}"
        ) from None


def _load_ca(context: ssl.SSLContext, ca_file: PemFile) -> None:
    load_certificates(ca_file)
    try:
        context.load_verify_locations(cafile=str(Path(ca_file.path).expanduser()))
    except (ssl.SSLError, OSError) as exc:
        raise TLSFileError(f"OpenSSL rejected the CA file {ca_file.describe()}: {exc}") from None


def _reject_password() -> str:
    # Called by OpenSSL only for an encrypted key, which load_private_key
    # rejects first. Without a callback OpenSSL would prompt on the terminal.
    raise TLSFileError("the private key is encrypted; dicomvault reads only unencrypted keys")
