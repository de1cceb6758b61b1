"""Read DIMSE responses on the thread that waits for them.

After sending a C-STORE request, the sending thread would wait for
pynetdicom's DUL thread to notice the response on the socket, decode it and
pass it through two queues. The DUL thread looks at the socket between
sleeps, so each sub-operation of a retrieve waits for that hand-over. For
the associations that carry sub-operations, the sending thread takes the
socket for the time of one request and its response and reads the response
PDUs itself.

While the sending thread has the socket turn (see
:mod:`dicomvault.dimse.socket_turn`), the DUL thread skips its reads (it
keeps running its state machine and its timers). P-DATA-TF PDUs in
state Sta6 are decoded here, the C-STORE response by hand (see
:mod:`dicomvault.dimse.command_set`); another message without a data set,
such as a C-CANCEL request, goes to pynetdicom's DIMSE provider as the
DUL's action DT-2 would pass it. Any other PDU (A-ABORT, A-RELEASE-RQ, an
invalid one) is handed to the DUL thread's queues, exactly as if the DUL
had read it, so the state machine stays the single owner of the
association's state.
"""

from __future__ import annotations

import contextlib
import logging
import select
import ssl
import struct
from collections.abc import Iterator
from typing import Any

from pynetdicom.pdu_primitives import P_DATA

from dicomvault.dimse.command_set import (
    C_STORE_RSP,
    CommandSetError,
    StoreResponse,
    command_field,
    decode_store_response,
)
from dicomvault.dimse.socket_turn import SocketTurn, guard_socket_reads

LOGGER = logging.getLogger(__name__)

P_DATA_TF = 0x04
DATA_TRANSFER_STATE = "Sta6"
PDU_HEADER = struct.Struct(">BBI")  # PDU type, reserved, PDU length
PDV_HEADER = struct.Struct(">IBB")  # item length, context ID, message control header
COMMAND_BIT = 0x01  # message control header: command (1) or data set (0)
LAST_BIT = 0x02  # message control header: last fragment
KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))
# An upper bound on any PDU the archive accepts from a peer that carries sub-operations.
MAX_PDU_LENGTH = 64 * 1024 * 1024


class ReceiveError(RuntimeError):
    """No DIMSE message could be read; the reason is in the message."""


class DirectReceiver:
    """Reads DIMSE messages from an association's socket on the calling thread."""

    def __init__(self, assoc: Any, sock: Any, turn: SocketTurn) -> None:
        self.assoc = assoc
        self.sock = sock
        self.turn = turn

    @classmethod
    def install(cls, assoc: Any) -> DirectReceiver | None:
        """Return a receiver that reads from the socket of ``assoc`` on the calling thread.

        From then on the DUL thread reads only with the socket turn (see
        :mod:`dicomvault.dimse.socket_turn`). Returns None, and changes
        nothing, when the association runs over TLS, whose socket must be
        read by one thread only.
        """
        sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        if sock is None or isinstance(sock, ssl.SSLSocket):
            return None
        return cls(assoc, sock, guard_socket_reads(assoc))

    @contextlib.contextmanager
    def socket_taken(self) -> Iterator[None]:
        """Hold the socket: the DUL thread reads nothing until the block ends."""
        with self.turn.taken():
            yield

    def read_store_response(self, timeout: float | None) -> StoreResponse:
        """Read PDUs until a whole C-STORE response has arrived and return it.

        Call it inside :meth:`socket_taken`. ``timeout`` bounds the wait
        for each PDU (None waits as long as it takes). A message without a
        data set that arrives first, such as a C-CANCEL request on a C-GET
        association, is passed to pynetdicom's DIMSE provider as the DUL
        thread would pass it.

        Raises
        ------
        ReceiveError
            If the connection closed, the wait timed out, the peer sent a
            PDU other than P-DATA-TF (which is then left to the DUL thread),
            or a message that is neither a C-STORE response nor one without
            a data set.
        """
        while True:
            fragments = self._read_command(timeout)
            command = b"".join(value for _, control, value in fragments)
            try:
                field, has_data_set = command_field(command)
                if field == C_STORE_RSP and not has_data_set:
                    return decode_store_response(command)
            except CommandSetError as exc:
                raise ReceiveError(f"invalid command set: {exc}") from exc
            if has_data_set:
                raise ReceiveError(f"unexpected message 0x{field:04X} with a data set")
            primitive = P_DATA()
            for context_id, control, value in fragments:
                primitive.presentation_data_value_list.append(
                    (context_id, bytes([control]) + bytes(value))
                )
            self.assoc.dimse.receive_primitive(primitive)

    def _read_command(self, timeout: float | None) -> list[tuple[int, int, memoryview]]:
        """Read PDUs until a command set is complete; return its PDVs."""
        fragments: list[tuple[int, int, memoryview]] = []
        while True:
            for context_id, control, value in self._read_pdvs(timeout):
                if not control & COMMAND_BIT:
                    raise ReceiveError("data set fragment where a command set was expected")
                fragments.append((context_id, control, value))
                if control & LAST_BIT:
                    return fragments

    def _read_pdvs(self, timeout: float | None) -> list[tuple[int, int, memoryview]]:
        """Read one P-DATA-TF PDU; return its PDVs as (context ID, control header, value)."""
        dul = self.assoc.dul
        header = self._read_exactly(PDU_HEADER.size, timeout)
        pdu_type, _, length = PDU_HEADER.unpack(header)
        if pdu_type not in KNOWN_PDU_TYPES or length > MAX_PDU_LENGTH:
            dul.event_queue.put("Evt19")  # invalid or unrecognised PDU
            raise ReceiveError(f"invalid PDU (type 0x{pdu_type:02X}, length {length})")
        body = self._read_exactly(length, timeout)
        dul._idle_timer.restart()
        if pdu_type == P_DATA_TF and dul.state_machine.current_state == DATA_TRANSFER_STATE:
            return _pdvs(body)
        # Anything else goes where the DUL thread puts what it reads, for its state machine.
        try:
            pdu, event = dul._decode_pdu(header + body)
        except Exception as exc:  # pynetdicom raises several kinds on bad PDUs
            dul.event_queue.put("Evt19")  # invalid or unrecognised PDU
            raise ReceiveError(f"undecodable PDU: {exc}") from exc
        dul._recv_pdu.put(pdu)
        dul.event_queue.put(event)
        raise ReceiveError(f"the peer sent {type(pdu).__name__} instead of a C-STORE response")

    def _read_exactly(self, count: int, timeout: float | None) -> bytearray:
        buffer = bytearray(count)
        view = memoryview(buffer)
        received = 0
        while received < count:
            readable, _, _ = select.select([self.sock], [], [], timeout)
            if not readable:
                raise ReceiveError(f"no data from the peer within {timeout} s")
            try:
                got = self.sock.recv_into(view[received:], count - received)
            except OSError as exc:
                got = 0
                LOGGER.warning("Reading from the peer failed: %s", exc)
            if got == 0:
                self.assoc.dul.event_queue.put("Evt17")  # transport connection closed
                raise ReceiveError("the peer closed the connection")
            received += got
        return buffer


def _pdvs(body: bytearray) -> list[tuple[int, int, memoryview]]:
    """Split the body of a P-DATA-TF PDU into (context ID, message control header, value)."""
    view = memoryview(body)
    pdvs = []
    position = 0
    while position < len(body):
        if len(body) - position < PDV_HEADER.size:
            raise ReceiveError("P-DATA-TF PDU ends inside a PDV header")
        item_length, context_id, control = PDV_HEADER.unpack_from(body, position)
        if item_length < 2 or position + 4 + item_length > len(body):
            raise ReceiveError(f"PDV item length {item_length} does not fit its PDU")
        end = position + 4 + item_length
        pdvs.append((context_id, control, view[position + PDV_HEADER.size : end]))
        position = end
    return pdvs
