"""Write DIMSE messages to the socket from the thread that sends them.

pynetdicom hands every P-DATA-TF PDU from the association's thread to its
DUL thread through a queue, and the DUL thread encodes and writes one PDU per
turn of its loop. A 512 KiB instance sent to a peer that accepts 16 KiB PDUs
is 32 PDUs, so the hand-over, not the network, sets the rate of C-STORE
sub-operations. For the associations that carry sub-operations, the archive
encodes the PDUs itself (PS3.8 9.3.5) and writes them in large batches.

Only sending changes. The DUL thread still reads every PDU from the peer,
runs the state machine and sends association control PDUs (A-RELEASE,
A-ABORT) through its queue. Sending P-DATA-TF is action DT-1 of the state
machine in state Sta6 and changes no state, so the two threads stay in step.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
from collections.abc import Callable, Iterator
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE

LOGGER = logging.getLogger(__name__)

P_DATA_TF = 0x04
PDU_HEADER = struct.Struct(">BBI")  # PDU type, reserved, PDU length
PDV_HEADER = struct.Struct(">IB")  # item length, presentation context ID
# Bytes gathered before one write: large enough that the system call cost
# vanishes, small enough to keep memory flat for any instance size.
BATCH_BYTES = 256 * 1024
QUICK_ACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def send_directly(assoc: Any) -> Callable[[], None] | None:
    """Make ``assoc`` write its DIMSE messages itself; return a function that undoes it.

    Returns None, and changes nothing, when the association runs over TLS:
    an SSL socket must not be written by one thread while another reads it.
    """
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is None or isinstance(sock, ssl.SSLSocket):
        return None
    provider = assoc.dimse
    original = provider.send_msg

    quick_ack = _supports_quick_ack(sock)

    def send_msg(primitive: Any, context_id: int) -> None:
        _send_message(assoc, sock, primitive, context_id, quick_ack)

    provider.send_msg = send_msg

    def restore() -> None:
        provider.send_msg = original

    return restore


def _send_message(assoc: Any, sock: Any, primitive: Any, context_id: int, quick_ack: bool) -> None:
    """Encode one DIMSE message as P-DATA-TF PDUs and write them.

    Raises
    ------
    OSError
        If the connection fails. The DUL first receives Evt17 (transport
        connection closed), as when pynetdicom's own write fails.
    """
    if primitive.MessageIDBeingRespondedTo is None:
        message = _RQ_TO_MESSAGE[primitive.__class__]()
    else:
        message = _RSP_TO_MESSAGE[primitive.__class__]()
    message.primitive_to_message(primitive)
    message.context_id = context_id
    evt.trigger(assoc, evt.EVT_DIMSE_SENT, {"message": message})

    max_pdu = assoc.dimse.maximum_pdu_size
    try:
        for batch in _batches(message.encode_msg(context_id, max_pdu)):
            sock.sendall(batch)
        if quick_ack:
            # Linux delays acknowledgements once a connection looks
            # interactive, as it does after each response. A peer with
            # Nagle's algorithm on then waits for them before sending the
            # small pieces of its next message.
            sock.setsockopt(socket.IPPROTO_TCP, QUICK_ACK, 1)
    except OSError:
        peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
        LOGGER.warning("Connection to %s closed while sending", peer.ae_title)
        assoc.dul.event_queue.put("Evt17")  # transport connection closed
        raise


def _supports_quick_ack(sock: Any) -> bool:
    if QUICK_ACK is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, QUICK_ACK, 1)
    except OSError:  # not a TCP socket
        return False
    return True


def _batches(primitives: Iterator[Any]) -> Iterator[bytes]:
    """Encode P-DATA primitives as P-DATA-TF PDUs, joined into batches of about BATCH_BYTES."""
    parts: list[bytes] = []
    size = 0
    for primitive in primitives:
        for context_id, value in primitive.presentation_data_value_list:
            # value is the message control header followed by the fragment.
            item_length = len(value) + 1
            parts.append(PDU_HEADER.pack(P_DATA_TF, 0, item_length + 4))
            parts.append(PDV_HEADER.pack(item_length, context_id))
            parts.append(value)
            size += item_length + 10
        if size >= BATCH_BYTES:
            yield b"".join(parts)
            parts, size = [], 0
    if parts:
        yield b"".join(parts)
