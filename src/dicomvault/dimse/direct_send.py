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
from typing import IO, Any

from pynetdicom import evt
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE

LOGGER = logging.getLogger(__name__)

P_DATA_TF = 0x04
PDU_HEADER = struct.Struct(">BBI")  # PDU type, reserved, PDU length
PDV_HEADER = struct.Struct(">IB")  # item length, presentation context ID
# A P-DATA-TF PDU with one PDV: both headers and the message control header.
PDU_AND_PDV_HEADER = struct.Struct(">BBIIBB")
# Message control header (PS3.8 E.2): bit 0 command or data set, bit 1 last fragment.
DATASET_FRAGMENT = 0x00
COMMAND_FRAGMENT = 0x01
LAST_FRAGMENT = 0x02
# Bytes gathered before one write: large enough that the system call cost
# vanishes, small enough to keep memory flat for any instance size.
BATCH_BYTES = 256 * 1024
QUICK_ACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only
IOV_MAX = 1024  # buffers per sendmsg call (the Linux limit)


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


class PartialMessageError(OSError):
    """Part of a message was written and the rest could not be: the association is unusable."""


class MessageWriter:
    """Writes DIMSE messages whose command set is already encoded, as P-DATA-TF PDUs.

    For the C-STORE requests of retrieve sub-operations: the command set
    comes from :mod:`dicomvault.dimse.command_set` and the data set from a
    stored file or from bytes, so no pydicom dataset is built per message.
    """

    def __init__(self, assoc: Any, sock: Any) -> None:
        self.assoc = assoc
        self.sock = sock
        self.quick_ack = _supports_quick_ack(sock)

    @classmethod
    def for_association(cls, assoc: Any) -> MessageWriter | None:
        """Return a writer for ``assoc``, or None when it runs over TLS (see send_directly)."""
        sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        if sock is None or isinstance(sock, ssl.SSLSocket):
            return None
        return cls(assoc, sock)

    def write(
        self,
        context_id: int,
        command_set: bytes,
        data_set: bytes | None = None,
        data_set_stream: IO[bytes] | None = None,
    ) -> None:
        """Write one message: the command set, then the data set from bytes or from a stream.

        A stream is read from its position to its end.

        Raises
        ------
        PartialMessageError
            If the connection failed, or the file could not be read to its
            end, after part of the message was written. After a connection
            failure the DUL receives Evt17 (transport connection closed), as
            in send_directly.
        OSError
            If the file cannot be opened or read before anything is written.
        """
        fragment = _fragment_size(self.assoc.dimse.maximum_pdu_size)
        buffers = _fragment_pdus(memoryview(command_set), context_id, fragment, True, True)
        if data_set_stream is not None:
            # The command set goes out with the first part of the data set.
            batches = _stream_pdus(data_set_stream, context_id, fragment)
            self._send(buffers + next(batches))
            try:
                for batch in batches:
                    self._send(batch)
            except OSError as exc:
                if isinstance(exc, PartialMessageError):
                    raise
                name = getattr(data_set_stream, "name", "data set")
                raise PartialMessageError(f"{name}: {exc}") from exc
        else:
            data = memoryview(data_set or b"")
            for start in range(0, max(len(data), 1), BATCH_BYTES):
                part = data[start : start + BATCH_BYTES]
                ends = start + BATCH_BYTES >= len(data)
                self._send(buffers + _fragment_pdus(part, context_id, fragment, False, ends))
                buffers = []
        if self.quick_ack:
            self.sock.setsockopt(socket.IPPROTO_TCP, QUICK_ACK, 1)

    def _send(self, buffers: list[memoryview | bytes]) -> None:
        try:
            _send_buffers(self.sock, buffers)
        except OSError as exc:
            peer = self.assoc.acceptor if self.assoc.is_requestor else self.assoc.requestor
            LOGGER.warning("Connection to %s closed while sending", peer.ae_title)
            self.assoc.dul.event_queue.put("Evt17")  # transport connection closed
            raise PartialMessageError(f"connection closed while sending: {exc}") from exc


def _supports_quick_ack(sock: Any) -> bool:
    if QUICK_ACK is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, QUICK_ACK, 1)
    except OSError:  # not a TCP socket
        return False
    return True


def _fragment_size(max_pdu: int) -> int:
    """Return the data bytes per PDV for a peer's maximum PDU length (0: no limit).

    The size is even, so that only the last fragment of an odd-length data
    set has an odd length, as with pynetdicom and an even maximum.
    """
    if max_pdu == 0:
        return BATCH_BYTES
    return max(2, (max_pdu - 6) & ~1)


def _fragment_pdus(
    data: memoryview, context_id: int, fragment: int, command: bool, ends_message: bool
) -> list[memoryview | bytes]:
    """Split ``data`` into P-DATA-TF PDUs of one PDV each, as header and data buffers.

    ``ends_message`` marks the PDV with the end of ``data`` as the last
    fragment of the command set or data set. An empty ``data`` that ends the
    message is one empty last fragment.
    """
    base = COMMAND_FRAGMENT if command else DATASET_FRAGMENT
    buffers: list[memoryview | bytes] = []
    length = len(data)
    if length:
        starts = range(0, length, fragment)
    elif ends_message:
        starts = range(1)  # one empty fragment
    else:
        starts = range(0)
    for start in starts:
        piece = data[start : start + fragment]
        last = ends_message and start + fragment >= length
        item_length = len(piece) + 2  # context ID and message control header
        buffers.append(
            PDU_AND_PDV_HEADER.pack(
                P_DATA_TF,
                0,
                item_length + 4,
                item_length,
                context_id,
                base | LAST_FRAGMENT if last else base,
            )
        )
        buffers.append(piece)
    return buffers


def _stream_pdus(stream: Any, context_id: int, fragment: int) -> Iterator[list[memoryview | bytes]]:
    """Read a data set from ``stream``'s position to its end; yield its P-DATA-TF PDUs as buffers.

    Each yielded list contains about BATCH_BYTES of PDUs, to write with one
    ``sendmsg``. The data buffers are views of one reused buffer, valid
    until the next list is requested.
    """
    buffer = bytearray(max(1, BATCH_BYTES // fragment) * fragment)
    start = stream.tell()
    remaining = stream.seek(0, 2) - start
    stream.seek(start)
    if remaining <= 0:
        yield _fragment_pdus(memoryview(b""), context_id, fragment, False, True)
    while remaining > 0:
        count = min(stream.readinto(buffer) or 0, remaining)
        if count <= 0:
            name = getattr(stream, "name", "the data set")
            raise OSError(f"{name} ended before its size: {remaining} bytes missing")
        remaining -= count
        yield _fragment_pdus(
            memoryview(buffer)[:count], context_id, fragment, False, remaining == 0
        )


def _send_buffers(sock: Any, buffers: list[memoryview | bytes]) -> None:
    """Write every buffer, in order, with as few system calls as the kernel allows."""
    pending = [view for view in (memoryview(buffer).cast("B") for buffer in buffers) if view]
    while pending:
        sent = sock.sendmsg(pending[:IOV_MAX])
        while sent:
            if sent >= len(pending[0]):
                sent -= len(pending.pop(0))
            else:
                pending[0] = pending[0][sent:]
                sent = 0


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
