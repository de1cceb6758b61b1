"""Socket options and reads for DIMSE connections."""

from __future__ import annotations

import logging
import socket
import time
import types
from typing import Any

LOGGER = logging.getLogger(__name__)

# A read allocates its whole buffer up front only up to this size. A larger
# read grows its buffer as bytes arrive, so a PDU header that announces a
# huge length costs no memory until the bytes come.
PREALLOCATE_LIMIT = 4 * 1024 * 1024


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


def read_promptly(assoc: Any, read_timeout: float | None = None) -> None:
    """Read whole PDUs in few calls and acknowledge each read at once.

    pynetdicom reads a PDU 4 KiB at a time. The replacement reads what the
    socket has, up to the rest of the PDU, into one buffer. On Linux it also
    sets TCP_QUICKACK after each read. A peer that leaves Nagle's algorithm
    on (DCMTK's default) holds back the last part of a message until its
    earlier segments are acknowledged, so a delayed acknowledgement costs
    up to 40 ms per message.

    With ``read_timeout``, the socket gets that timeout, for sends too.
    pynetdicom 3.0 leaves accepted sockets blocking without one, so a peer
    that stalls inside a PDU would hold the association's thread for good. One read (a
    PDU header, or the rest of a PDU) also raises :class:`TimeoutError`
    when it has taken longer than ``read_timeout`` seconds in total, so a
    peer that sends a few bytes now and then cannot keep a read going.
    """
    transport = getattr(assoc.dul, "socket", None)
    sock = _socket_of(assoc)
    if transport is None or sock is None:
        return
    if read_timeout is not None:
        sock.settimeout(read_timeout)
    quick_ack = getattr(socket, "TCP_QUICKACK", None)
    if quick_ack is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, quick_ack, 1)
        except OSError:  # not a TCP socket, or a system without the option
            quick_ack = None

    def recv(self: Any, nr_bytes: int) -> bytearray:
        deadline = None if read_timeout is None else time.monotonic() + read_timeout
        buffer = bytearray(min(nr_bytes, PREALLOCATE_LIMIT))
        received = 0
        while received < nr_bytes:
            if received == len(buffer):
                buffer.extend(bytes(min(nr_bytes - received, PREALLOCATE_LIMIT)))
            with memoryview(buffer) as view:
                count = sock.recv_into(view[received:], len(buffer) - received)
            if quick_ack is not None:
                sock.setsockopt(socket.IPPROTO_TCP, quick_ack, 1)
            if count == 0:  # connection closed: return what arrived, as pynetdicom does
                return buffer[:received]
            received += count
            if deadline is not None and received < nr_bytes and time.monotonic() > deadline:
                raise TimeoutError(f"{received} of {nr_bytes} bytes arrived in {read_timeout:g} s")
        return buffer

    transport.recv = types.MethodType(recv, transport)


def _socket_of(assoc: Any) -> Any:
    transport = getattr(assoc.dul, "socket", None)
    return getattr(transport, "socket", None)
