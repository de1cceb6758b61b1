"""PDU reads with read_promptly, over a connected pair of sockets."""

from __future__ import annotations

import socket
import threading
import types
from collections.abc import Iterator

import pytest

from dicomvault.dimse.tcp import read_promptly


class Transport:
    """The part of pynetdicom's AssociationSocket that read_promptly replaces."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock

    def recv(self, nr_bytes: int) -> bytearray:
        raise AssertionError("read_promptly did not replace recv")


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


@pytest.fixture(params=["tcp", "unix"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Transport, socket.socket]]:
    # TCP sockets take TCP_QUICKACK on Linux, Unix sockets reject it.
    left, right = tcp_pair() if request.param == "tcp" else socket.socketpair()
    transport = Transport(left)
    assoc = types.SimpleNamespace(dul=types.SimpleNamespace(socket=transport))
    read_promptly(assoc)
    yield transport, right
    left.close()
    right.close()


def test_reads_across_writes(pair: tuple[Transport, socket.socket]) -> None:
    transport, peer = pair
    payload = bytes(range(256)) * 1024

    def write_in_pieces() -> None:
        for start in range(0, len(payload), 10_000):
            peer.sendall(payload[start : start + 10_000])

    writer = threading.Thread(target=write_in_pieces)
    writer.start()
    received = transport.recv(len(payload))
    writer.join(timeout=10)

    assert received == payload
    assert isinstance(received, bytearray)


def test_closed_connection_returns_partial(pair: tuple[Transport, socket.socket]) -> None:
    transport, peer = pair
    peer.sendall(b"abc")
    peer.shutdown(socket.SHUT_WR)

    assert transport.recv(10) == bytearray(b"abc")
