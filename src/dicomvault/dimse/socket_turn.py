"""Decide which thread reads an association's socket.

pynetdicom's DUL thread reads every PDU that arrives on an association. The
thread that sends C-STORE sub-operations reads their responses itself (see
:mod:`dicomvault.dimse.direct_receive`), and a response the DUL thread read
first would be lost to it: the sub-operation would wait for the DIMSE timeout.

Both threads therefore take the association's socket turn before they read.
The sending thread waits for the turn; the DUL thread only tries to take it,
and skips its read when another thread has it. :func:`guard_socket_reads`
makes every read of the DUL thread go through the turn.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

# The attribute of an association's DUL provider that keeps its turn.
_TURN_ATTRIBUTE = "_dicomvault_socket_turn"
_GUARD_LOCK = threading.Lock()
# The maximum wait for the DUL thread to finish a read it started before the guard.
FIRST_GUARDED_POLL_SECONDS = 1.0


class SocketTurn:
    """The right to read one association's socket, held by one thread at a time."""

    def __init__(self, poll: Callable[[], bool]) -> None:
        self._poll = poll
        self._lock = threading.Lock()
        self._polled = threading.Event()

    def poll(self) -> bool:
        """Read a PDU as the DUL thread does, unless another thread has the turn.

        Returns what pynetdicom's poll returns: True when a PDU was read.
        """
        if not self._polled.is_set():
            self._polled.set()
        if not self._lock.acquire(blocking=False):
            return False
        try:
            return bool(self._poll())
        finally:
            self._lock.release()

    def is_taken(self) -> bool:
        """Return True while a thread has the turn."""
        return self._lock.locked()

    @contextlib.contextmanager
    def taken(self) -> Iterator[None]:
        """Hold the turn for the block: the DUL thread reads nothing until it ends."""
        with self._lock:
            yield

    def wait_for_guarded_poll(self, timeout: float) -> bool:
        """Wait until the DUL thread has polled through the turn at least once.

        A read that the DUL thread began before :func:`guard_socket_reads`
        has then ended. Returns False if that did not happen within ``timeout``.
        """
        return self._polled.wait(timeout)


def guard_socket_reads(assoc: Any) -> SocketTurn:
    """Make the DUL thread of ``assoc`` read only with the socket turn; return the turn.

    Calling it again returns the same turn. When the DUL thread is already
    running, this waits (at most :data:`FIRST_GUARDED_POLL_SECONDS`) until
    any read it started unguarded has ended, so that a thread that takes the
    turn afterwards is the only reader.
    """
    dul = assoc.dul
    with _GUARD_LOCK:
        turn = getattr(dul, _TURN_ATTRIBUTE, None)
        if turn is None:
            turn = SocketTurn(dul._is_transport_event)
            dul._is_transport_event = turn.poll
            setattr(dul, _TURN_ATTRIBUTE, turn)
    is_alive = getattr(dul, "is_alive", None)
    if callable(is_alive) and is_alive():
        turn.wait_for_guarded_poll(FIRST_GUARDED_POLL_SECONDS)
    return turn
