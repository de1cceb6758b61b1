"""MessageWriter and DirectReceiver over a socket pair, against pynetdicom's encoding."""

from __future__ import annotations

import io
import queue
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pynetdicom.dimse_messages import C_CANCEL_RQ, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_CANCEL, C_STORE
from pynetdicom.pdu import P_DATA_TF

from dicomvault.dimse.command_set import encode_store_request
from dicomvault.dimse.direct_receive import DirectReceiver, ReceiveError
from dicomvault.dimse.direct_send import BATCH_BYTES, MessageWriter, PartialMessageError
from dicomvault.dimse.socket_turn import SocketTurn

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
INSTANCE_UID = "1.2.826.0.1.3680043.8.498.7"
PDU_HEADER = struct.Struct(">BBI")
A_ABORT = bytes.fromhex("07000000000400000000")


def fake_association(max_pdu: int = 16384) -> Any:
    dul = SimpleNamespace(
        event_queue=queue.Queue(),
        _recv_pdu=queue.Queue(),
        _idle_timer=SimpleNamespace(restart=lambda: None),
        state_machine=SimpleNamespace(current_state="Sta6"),
        _decode_pdu=lambda data: (f"PDU type {data[0]}", "Evt16"),
        _is_transport_event=lambda: True,
    )
    received: list[Any] = []
    dimse = SimpleNamespace(maximum_pdu_size=max_pdu, receive_primitive=received.append)
    return SimpleNamespace(
        dul=dul,
        dimse=dimse,
        received=received,
        is_requestor=True,
        acceptor=SimpleNamespace(ae_title="PEER"),
    )


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def written_by(write: Any, pair: tuple[socket.socket, socket.socket]) -> bytes:
    """Run ``write`` on our end of the pair; return what the other end read."""
    ours, theirs = pair
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(read_all(theirs)))
    reader.start()
    write()
    ours.shutdown(socket.SHUT_WR)
    reader.join(timeout=10)
    return result[0]


def pdvs(stream: bytes) -> list[tuple[int, int, bytes]]:
    """Split a stream of P-DATA-TF PDUs into (context ID, control header, value)."""
    found = []
    position = 0
    while position < len(stream):
        pdu_type, _, length = PDU_HEADER.unpack_from(stream, position)
        assert pdu_type == 0x04
        end = position + 6 + length
        position += 6
        while position < end:
            (item_length,) = struct.unpack_from(">I", stream, position)
            context_id, control = stream[position + 4], stream[position + 5]
            found.append((context_id, control, stream[position + 6 : position + 4 + item_length]))
            position += 4 + item_length
    return found


def pynetdicom_stream(message: Any, context_id: int, max_pdu: int) -> bytes:
    encoded = []
    for primitive in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        encoded.append(bytes(pdu.encode()))
    return b"".join(encoded)


def store_request_stream(path: Path, offset: int, max_pdu: int) -> bytes:
    request = C_STORE()
    request.MessageID = 5
    request.AffectedSOPClassUID = CT_IMAGE_STORAGE
    request.AffectedSOPInstanceUID = INSTANCE_UID
    request.Priority = 0x0002
    request._dataset_path = (path, offset)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return pynetdicom_stream(message, 3, max_pdu)


def response_stream(message_id: int, status: int, max_pdu: int = 16384) -> bytes:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = message_id
    response.AffectedSOPClassUID = CT_IMAGE_STORAGE
    response.AffectedSOPInstanceUID = INSTANCE_UID
    response.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    return pynetdicom_stream(message, 3, max_pdu)


def cancel_stream(message_id: int) -> bytes:
    cancel = C_CANCEL()
    cancel.MessageIDBeingRespondedTo = message_id
    message = C_CANCEL_RQ()
    message.primitive_to_message(cancel)
    return pynetdicom_stream(message, 1, 16384)


class TestMessageWriter:
    @pytest.mark.parametrize("size", [0, 1, 16378, 600_001])
    def test_file_written_as_pynetdicom_writes_it(
        self, size: int, tmp_path: Path, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        path = tmp_path / "instance.dcm"
        path.write_bytes(b"M" * 140 + bytes(range(256)) * (size // 256) + b"x" * (size % 256))
        writer = MessageWriter(fake_association(), pair[0])
        command = encode_store_request(5, CT_IMAGE_STORAGE, INSTANCE_UID)

        with path.open("rb") as data_set:
            data_set.seek(140)
            stream = written_by(lambda: writer.write(3, command, data_set_stream=data_set), pair)

        assert stream == store_request_stream(path, 140, 16384)

    def test_bytes_with_odd_maximum_pdu(self, pair: tuple[socket.socket, socket.socket]) -> None:
        data = bytes(range(256)) * 1000
        writer = MessageWriter(fake_association(max_pdu=4097), pair[0])
        command = encode_store_request(5, CT_IMAGE_STORAGE, INSTANCE_UID)

        found = pdvs(written_by(lambda: writer.write(3, command, data_set=data), pair))

        assert all(context_id == 3 for context_id, _, _ in found)
        assert [control for _, control, _ in found] == [0x03] + [0x00] * (len(found) - 2) + [0x02]
        assert all(len(value) % 2 == 0 and len(value) <= 4091 for _, _, value in found[:-1])
        assert found[0][2] == command
        assert b"".join(value for _, _, value in found[1:]) == data

    def test_file_shrinking_while_read(self, pair: tuple[socket.socket, socket.socket]) -> None:
        writer = MessageWriter(fake_association(), pair[0])
        command = encode_store_request(5, CT_IMAGE_STORAGE, INSTANCE_UID)
        stream = ShrinkingStream(bytes(BATCH_BYTES * 3))

        def write() -> None:
            with pytest.raises(PartialMessageError, match="ended before its size"):
                writer.write(3, command, data_set_stream=stream)

        written = written_by(write, pair)

        assert 0 < len(written) < BATCH_BYTES * 2


class ShrinkingStream(io.BytesIO):
    """A file that loses its end after the first read, as if truncated meanwhile."""

    def readinto(self, buffer: Any) -> int:
        if self.tell() > 0:
            return 0
        return super().readinto(buffer)


class TestDirectReceiver:
    def receiver(self, assoc: Any, sock: socket.socket) -> DirectReceiver:
        return DirectReceiver(assoc, sock, SocketTurn(assoc.dul._is_transport_event))

    def test_response_fragmented_over_several_pdus(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        assoc = fake_association()
        pair[1].sendall(response_stream(5, 0xB000, max_pdu=32))

        response = self.receiver(assoc, pair[0]).read_store_response(timeout=5)

        assert (response.message_id_being_responded_to, response.status) == (5, 0xB000)

    def test_cancel_before_the_response_goes_to_pynetdicom(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        assoc = fake_association()
        pair[1].sendall(cancel_stream(9) + response_stream(5, 0x0000))

        response = self.receiver(assoc, pair[0]).read_store_response(timeout=5)

        assert response.status == 0x0000
        [cancel] = assoc.received
        assert cancel.presentation_data_value_list == [(1, b"\x03" + cancel_stream(9)[12:])]

    def test_abort_is_left_to_the_state_machine(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        assoc = fake_association()
        pair[1].sendall(A_ABORT)

        with pytest.raises(ReceiveError, match="instead of a C-STORE response"):
            self.receiver(assoc, pair[0]).read_store_response(timeout=5)

        assert assoc.dul.event_queue.get_nowait() == "Evt16"
        assert assoc.dul._recv_pdu.get_nowait() == "PDU type 7"

    def test_closed_connection(self, pair: tuple[socket.socket, socket.socket]) -> None:
        assoc = fake_association()
        pair[1].sendall(response_stream(5, 0x0000)[:20])
        pair[1].close()

        with pytest.raises(ReceiveError, match="closed the connection"):
            self.receiver(assoc, pair[0]).read_store_response(timeout=5)

        assert assoc.dul.event_queue.get_nowait() == "Evt17"

    def test_silent_peer_times_out(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with pytest.raises(ReceiveError, match="no data from the peer"):
            self.receiver(fake_association(), pair[0]).read_store_response(timeout=0.05)

    def test_unknown_pdu_type(self, pair: tuple[socket.socket, socket.socket]) -> None:
        assoc = fake_association()
        pair[1].sendall(b"\x09\x00\x00\x00\x00\x00")

        with pytest.raises(ReceiveError, match="invalid PDU"):
            self.receiver(assoc, pair[0]).read_store_response(timeout=5)

        assert assoc.dul.event_queue.get_nowait() == "Evt19"

    def test_dul_reads_nothing_while_the_socket_is_taken(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        assoc = fake_association()
        assoc.dul.socket = SimpleNamespace(socket=pair[0])
        receiver = DirectReceiver.install(assoc)
        assert receiver is not None

        with receiver.socket_taken():
            assert assoc.dul._is_transport_event() is False
        assert assoc.dul._is_transport_event() is True
