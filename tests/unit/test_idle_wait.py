"""The reactor threads of an idle association wait for work instead of polling.

The DUL and DIMSE providers are stand-ins with the attributes the module
uses, and a socket pair plays the connection.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dicomvault.dimse.idle_wait import _WAKE, IDLE_POLLS, IDLE_WAIT_SECONDS, wait_when_idle

MESSAGE = (1, "a DIMSE message")


class FakeTransport:
    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock


class FakeDul:
    """The DUL provider's attributes that the idle wait reads and replaces."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = FakeTransport(sock)
        self._run_loop_delay = 0.001
        self.to_provider_queue: queue.Queue[Any] = queue.Queue()
        self.event_queue: queue.Queue[Any] = queue.Queue()
        self.polls = 0

    def _is_transport_event(self) -> bool:
        """Report data when the socket has some, and consume it, as a PDU read would."""
        self.polls += 1
        sock = self.socket.socket
        sock.setblocking(False)
        try:
            return bool(sock.recv(100))
        except BlockingIOError:
            return False


class FakeDimse:
    def __init__(self) -> None:
        self.msg_queue: queue.Queue[Any] = queue.Queue()
        self.dimse_timeout = 5.0

    def get_msg(self, block: bool = False) -> Any:
        raise AssertionError("replaced by the idle wait")


class FakeAssociation:
    def __init__(self, sock: socket.socket) -> None:
        self.dul = FakeDul(sock)
        self.dimse = FakeDimse()


@pytest.fixture
def connection() -> Iterator[tuple[FakeAssociation, socket.socket]]:
    ours, peer = socket.socketpair()
    assoc = FakeAssociation(ours)
    wait_when_idle(assoc)
    try:
        yield assoc, peer
    finally:
        ours.close()
        peer.close()


def go_idle(assoc: FakeAssociation) -> None:
    for _ in range(IDLE_POLLS + 1):
        assoc.dimse.get_msg(False)  # type: ignore[call-arg]


def test_busy_poll_does_not_wait(connection: tuple[FakeAssociation, socket.socket]) -> None:
    assoc, _ = connection

    assert assoc.dul._is_transport_event() is False
    assert assoc.dul._run_loop_delay == 0.001


def test_idle_dul_reads_arriving_pdu(
    connection: tuple[FakeAssociation, socket.socket],
) -> None:
    assoc, peer = connection
    for _ in range(IDLE_POLLS):
        assert assoc.dul._is_transport_event() is False
    threading.Timer(IDLE_WAIT_SECONDS / 4, peer.send, args=(b"PDU",)).start()

    assert assoc.dul._is_transport_event() is True
    assert assoc.dul._run_loop_delay == 0.001


def test_idle_dul_replaces_the_sleep_by_the_wait(
    connection: tuple[FakeAssociation, socket.socket],
) -> None:
    assoc, _ = connection
    for _ in range(IDLE_POLLS + 1):
        assoc.dul._is_transport_event()

    assert assoc.dul._run_loop_delay == 0


def test_idle_reactor_gets_message(
    connection: tuple[FakeAssociation, socket.socket],
) -> None:
    assoc, _ = connection
    go_idle(assoc)
    threading.Timer(IDLE_WAIT_SECONDS / 4, assoc.dimse.msg_queue.put, args=(MESSAGE,)).start()

    assert assoc.dimse.get_msg(False) == MESSAGE  # type: ignore[call-arg]


def test_pdu_received_wakes_the_waiting_reactor(
    connection: tuple[FakeAssociation, socket.socket],
) -> None:
    assoc, peer = connection
    waiter = assoc.dimse.get_msg.__self__  # type: ignore[attr-defined]
    waiter.reactor_waiting = True
    peer.send(b"A-RELEASE-RQ")

    assert assoc.dul._is_transport_event() is True
    assert assoc.dimse.msg_queue.get_nowait() is _WAKE


def test_blocking_get_skips_wakes(connection: tuple[FakeAssociation, socket.socket]) -> None:
    assoc, _ = connection
    assoc.dimse.msg_queue.put(_WAKE)
    assoc.dimse.msg_queue.put(MESSAGE)

    assert assoc.dimse.get_msg(True) == MESSAGE  # type: ignore[call-arg]


def test_polling_get_returns_nothing_for_a_wake(
    connection: tuple[FakeAssociation, socket.socket],
) -> None:
    assoc, _ = connection
    assoc.dimse.msg_queue.put(_WAKE)

    assert assoc.dimse.get_msg(False) == (None, None)  # type: ignore[call-arg]


def test_end_of_association_still_reaches_a_blocking_get(
    connection: tuple[FakeAssociation, socket.socket],
) -> None:
    # pynetdicom puts its own (None, None) when an association ends.
    assoc, _ = connection
    assoc.dimse.msg_queue.put((None, None))

    assert assoc.dimse.get_msg(True) == (None, None)  # type: ignore[call-arg]


def test_idle_dul_leaves_pdu_to_turn_holder(
    connection: tuple[FakeAssociation, socket.socket],
) -> None:
    # The C-GET case: the DUL waits in select when the sub-operation sender
    # takes the turn, and the C-STORE response that wakes the DUL is the sender's.
    assoc, peer = connection
    waiter = assoc.dimse.get_msg.__self__  # type: ignore[attr-defined]
    for _ in range(IDLE_POLLS - 1):
        assoc.dul._is_transport_event()
    polls_before = assoc.dul.polls
    results: list[bool] = []
    dul_thread = threading.Thread(target=lambda: results.append(assoc.dul._is_transport_event()))

    dul_thread.start()
    time.sleep(IDLE_WAIT_SECONDS / 4)  # the DUL is now in select
    with waiter.turn.taken():
        peer.send(b"C-STORE-RSP")
        dul_thread.join()
        ours = assoc.dul.socket.socket
        ours.setblocking(False)
        assert ours.recv(100) == b"C-STORE-RSP"  # still there for the sender

    assert results == [False]
    assert assoc.dul.polls == polls_before + 1  # the poll before select, none after


def test_dul_busy_while_turn_taken(
    connection: tuple[FakeAssociation, socket.socket],
) -> None:
    assoc, _ = connection
    waiter = assoc.dimse.get_msg.__self__  # type: ignore[attr-defined]
    with waiter.turn.taken():
        for _ in range(IDLE_POLLS * 2):
            assert assoc.dul._is_transport_event() is False

    assert assoc.dul._run_loop_delay == 0.001
    assert waiter.transport_empty_polls == 0
