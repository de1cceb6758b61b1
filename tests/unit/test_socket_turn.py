"""The socket turn keeps the DUL thread from reading what another thread waits for."""

from __future__ import annotations

import threading
import time
from typing import Any

from dicomvault.dimse.socket_turn import guard_socket_reads


class PollingDul:
    """A DUL stand-in whose thread calls ``_is_transport_event`` in a loop, as pynetdicom's does."""

    def __init__(self) -> None:
        self.reads: list[str] = []
        self.in_slow_read = threading.Event()
        self.finish_slow_read = threading.Event()
        self.stop = False
        self.slow = True
        self.thread = threading.Thread(target=self.run)

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def _is_transport_event(self) -> bool:
        if self.slow:
            # A read already under way when the guard is installed.
            self.slow = False
            self.in_slow_read.set()
            self.finish_slow_read.wait(5)
            self.reads.append("unguarded read ended")
            return True
        return False

    def run(self) -> None:
        while not self.stop:
            self._is_transport_event()
            time.sleep(0.001)


class Association:
    def __init__(self, dul: Any) -> None:
        self.dul = dul


def test_poll_skipped_while_turn_taken() -> None:
    polls: list[int] = []
    dul = type("Dul", (), {"_is_transport_event": lambda self: bool(polls.append(1)) or True})()
    turn = guard_socket_reads(Association(dul))

    with turn.taken():
        assert dul._is_transport_event() is False
        assert turn.is_taken()
    assert dul._is_transport_event() is True
    assert len(polls) == 1


def test_guard_twice_same_turn() -> None:
    dul = type("Dul", (), {"_is_transport_event": lambda self: False})()
    assoc = Association(dul)

    assert guard_socket_reads(assoc) is guard_socket_reads(assoc)


def test_guard_waits_for_earlier_read() -> None:
    dul = PollingDul()
    dul.thread.start()
    try:
        assert dul.in_slow_read.wait(5)
        threading.Timer(0.05, dul.finish_slow_read.set).start()

        guard_socket_reads(Association(dul))

        assert dul.reads == ["unguarded read ended"]
    finally:
        dul.stop = True
        dul.thread.join()
