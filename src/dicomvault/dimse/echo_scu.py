"""Verification SCU: send a C-ECHO to a remote node and time the round trip."""

from __future__ import annotations

import dataclasses
import logging
import time

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomvault.dimse.tls import tls_args_for
from dicomvault.nodes import RemoteNode
from dicomvault.tls import TLSFileError

LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EchoResult:
    """The outcome of one C-ECHO: success, round-trip time and the reason of a failure."""

    success: bool
    seconds: float
    message: str


def echo(node: RemoteNode, calling_ae_title: str, timeout: float = 10.0) -> EchoResult:
    """Associate with ``node``, send one C-ECHO and release; over TLS if the node is marked so.

    Network failures and unusable TLS files do not raise; they are returned
    as an unsuccessful result whose message states what failed.
    """
    try:
        tls_args = tls_args_for(node)
    except TLSFileError as exc:
        LOGGER.info("C-ECHO to %s not sent: %s", node.describe(), exc)
        return EchoResult(False, 0.0, str(exc))
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.add_requested_context(Verification)

    started = time.monotonic()
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        elapsed = time.monotonic() - started
        if assoc.is_rejected:
            reason = "the node rejected the association; check its AE title and allow-list"
        elif tls_args is not None:
            reason = (
                "no association: the connection was refused, timed out or aborted, or the "
                "TLS handshake failed; check that the node serves TLS on this port, that its "
                "certificate names the host and is signed by the CA of tls_ca_file, and "
                "whether it requires a client certificate"
            )
        else:
            reason = "no association: the connection was refused, timed out or aborted"
        LOGGER.info("C-ECHO to %s failed: %s", node.describe(), reason)
        return EchoResult(False, elapsed, reason)

    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    elapsed = time.monotonic() - started
    if status is None or "Status" not in status:
        return EchoResult(False, elapsed, "no C-ECHO response before the timeout")
    if status.Status != 0x0000:
        return EchoResult(False, elapsed, f"C-ECHO answered status 0x{status.Status:04X}")
    return EchoResult(True, elapsed, "success")
