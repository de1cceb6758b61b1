"""Socket options for DIMSE connections."""

from __future__ import annotations

import logging
import socket
from typing import Any

LOGGER = logging.getLogger(__name__)


def disable_nagle(assoc: Any) -> None:
    """Send small PDUs at once on the association's socket (TCP_NODELAY).

    pynetdicom leaves Nagle's algorithm on, which delays each small DIMSE
    message, such as a C-STORE response, until the peer acknowledges the
    previous one.
    """
    transport = getattr(assoc.dul, "socket", None)
    sock = getattr(transport, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        LOGGER.debug("Cannot set TCP_NODELAY: %s", exc)
