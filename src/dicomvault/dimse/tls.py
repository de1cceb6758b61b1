"""DICOM over TLS (PS3.15 Annex B): the server's context, its handshakes, and node contexts.

pynetdicom wraps each accepted socket with ``SSLContext.wrap_socket`` on
the thread that accepts connections, which by default completes the TLS
handshake there. A client that connects and sends nothing would then stop
every other client from connecting. The server context here defers the
handshake, and :func:`complete_handshake` runs it on the association's own
thread, with a time limit.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

from cryptography import x509

from dicomvault.config import DimseSettings
from dicomvault.nodes import RemoteNode
from dicomvault.tls import PemFile, client_context, describe_peer_certificate, server_context

LOGGER = logging.getLogger(__name__)


class DeferredHandshakeContext(ssl.SSLContext):
    """An SSL context whose server sockets do the handshake on first use, not when wrapped."""

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        """Wrap ``sock``; a server-side socket is returned before its handshake."""
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect and not server_side,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=server_hostname,
            session=session,
        )


def dimse_server_context(settings: DimseSettings) -> DeferredHandshakeContext:
    """Build the TLS context of the DIMSE service from the ``dimse.tls_*`` settings.

    Raises
    ------
    dicomvault.tls.TLSFileError
        If a certificate, key or CA file is missing, unreadable or invalid.
    """
    ca_file = PemFile(settings.tls_ca_file, "dimse.tls_ca_file") if settings.tls_ca_file else None
    return server_context(
        PemFile(settings.tls_cert_file, "dimse.tls_cert_file"),
        PemFile(settings.tls_key_file, "dimse.tls_key_file"),
        ca_file,
        settings.tls_require_client_cert,
        context_class=DeferredHandshakeContext,
    )


def node_client_context(node: RemoteNode) -> ssl.SSLContext:
    """Build the TLS context for associations with ``node``, from its TLS files.

    Raises
    ------
    dicomvault.tls.TLSFileError
        If one of the node's files is missing, unreadable or invalid.
    """
    label = f"node {node.ae_title}"
    ca_file = PemFile(node.tls_ca_file, f"{label} tls_ca_file") if node.tls_ca_file else None
    cert_file = key_file = None
    if node.tls_cert_file and node.tls_key_file:
        cert_file = PemFile(node.tls_cert_file, f"{label} tls_cert_file")
        key_file = PemFile(node.tls_key_file, f"{label} tls_key_file")
    return client_context(ca_file, cert_file, key_file)


def tls_args_for(node: RemoteNode) -> tuple[ssl.SSLContext, str] | None:
    """Return pynetdicom's ``tls_args`` for associating with ``node``: None without TLS.

    The node's host is the name its certificate must carry.

    Raises
    ------
    dicomvault.tls.TLSFileError
        If one of the node's files is missing, unreadable or invalid.
    """
    if not node.tls:
        return None
    return node_client_context(node), node.host


def complete_handshake(assoc: Any, timeout: float) -> bool:
    """Run the TLS handshake of an accepted connection, if it is a TLS one.

    Returns True when the connection is ready for the association: a plain
    TCP connection, or a TLS one whose handshake succeeded. When the
    handshake fails or takes longer than ``timeout`` seconds, logs a warning
    naming the peer, closes the connection and returns False.
    """
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return True
    peer = f"{assoc.requestor.address}:{assoc.requestor.port}"
    previous_timeout = sock.gettimeout()
    try:
        sock.settimeout(timeout)
        sock.do_handshake()
        sock.settimeout(previous_timeout)
    except (ssl.SSLError, OSError) as exc:
        assoc.dul.socket.close()
        if isinstance(exc, ssl.SSLEOFError):
            # Also a port check that connects and closes at once.
            LOGGER.debug("Connection from %s closed during the TLS handshake", peer)
        elif isinstance(exc, TimeoutError):
            LOGGER.warning("TLS handshake with %s timed out after %.0f s", peer, timeout)
        else:
            LOGGER.warning("TLS handshake with %s failed: %s", peer, _handshake_failure(exc))
        return False
    LOGGER.debug(
        "TLS connection from %s: %s, %s, client certificate: %s",
        peer,
        sock.version(),
        (sock.cipher() or ("unknown cipher",))[0],
        describe_peer_certificate(sock),
    )
    return True


def peer_certificate_subject(assoc: Any) -> x509.Name | None:
    """Return the subject of the client certificate of a TLS association, or None.

    None also for a plain TCP association and for a TLS client that sent no
    certificate. A certificate is only present when it verified against
    ``dimse.tls_ca_file`` during the handshake.
    """
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return None
    der = sock.getpeercert(binary_form=True)
    if not der:
        return None
    return x509.load_der_x509_certificate(der).subject


def _handshake_failure(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        text = exc.reason.replace("_", " ").lower()
        if exc.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return f"{text}; dimse.tls_require_client_cert requires one"
        if exc.reason in {"CERTIFICATE_VERIFY_FAILED", "TLSV1_ALERT_UNKNOWN_CA"}:
            return f"{text}; the client certificate is not signed by a CA of dimse.tls_ca_file"
        if exc.reason in {"WRONG_VERSION_NUMBER", "HTTP_REQUEST"}:
            return f"{text}; the client sent no TLS handshake, so it may not use TLS"
        return text
    return str(exc) or type(exc).__name__
