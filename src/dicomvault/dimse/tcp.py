"""Socket options and reads for DIMSE connections."""

from __future__ import annotations

import logging
import socket
import types
from typing import Any

LOGGER = logging.getLogger(__name__)


def disable_nagle(assoc: Any) -> None:
    """Send small PDUs at once on the association's socket (TCP_NODELAY).

    pynetdicom leaves Nagle's algorithm on, which delays each small DIMSE
    message, such as a C-STORE response, until the peer acknowledges the
    previous one.
    """
    sock = _socket_of(assoc)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        LOGGER.debug("Cannot set TCP_NODELAY: %s", exc)


def read_promptly(assoc: Any) -> None:
    """Read whole PDUs in few calls and acknowledge each read at once.

    pynetdicom reads a PDU 4 KiB at a time. The replacement reads what the
    socket has, up to the rest of the PDU, into one buffer. On Linux it also
    sets TCP_QUICKACK after each read. A peer that leaves Nagle's algorithm
    on (DCMTK's default) holds back the last part of a message until its
    earlier segments are acknowledged, so a delayed acknowledgement costs
    up to 40 ms per message.
    """
    transport = getattr(assoc.dul, "socket", None)
    sock = _socket_of(assoc)
    if transport is None or sock is None:
        return
    quick_ack = getattr(socket, "TCP_QUICKACK", None)
    if quick_ack is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, quick_ack, 1)
        except OSError:  # not a TCP socket, or a system without the option
            quick_ack = None

    def recv(self: Any, nr_bytes: int) -> bytearray:
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        while received < nr_bytes:
            count = sock.recv_into(view[received:], nr_bytes - received)
            if quick_ack is not None:
                sock.setsockopt(socket.IPPROTO_TCP, quick_ack, 1)
            if count == 0:  # connection closed: return what arrived, as pynetdicom does
                return buffer[:received]
            received += count
        return buffer

    transport.recv = types.MethodType(recv, transport)


def _socket_of(assoc: Any) -> Any:
    transport = getattr(assoc.dul, "socket", None)
    return getattr(transport, "socket", None)
