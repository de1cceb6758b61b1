"""Let the threads of an idle association wait for work instead of polling for it.

pynetdicom 3.0 runs two threads per association, the DUL reactor and the
association reactor, and each polls its queue or socket every millisecond.
With a hundred associations that is up to 200,000 wake-ups a second, each
taking the GIL. The polling alone used about half a core for 50 idle
associations, and the threads that had work waited for the GIL behind the
pollers.

After ``IDLE_POLLS`` empty polls in a row, a thread here blocks for up to
``IDLE_WAIT_SECONDS`` on what it polls for, and wakes at once when that
arrives. The DUL reactor waits in ``select`` on the socket, the
association reactor on its queue of DIMSE messages. A thread keeps polling
every millisecond while it has work, so a busy association responds as
before.

When the DUL reactor receives a PDU while the association reactor waits,
it wakes the association reactor, so an A-RELEASE-RQ or A-ABORT is seen at
once. What the waiting DUL reactor does not watch can wait up to
``IDLE_WAIT_SECONDS`` longer on an association that has been idle for
``IDLE_POLLS`` polls: an outgoing primitive that another thread queued,
such as an A-ABORT at shutdown. Responses that the association's own
thread writes (see :mod:`dicomvault.dimse.direct_send`) are not delayed.

The DUL reactor reads only with the association's socket turn (see
:mod:`dicomvault.dimse.socket_turn`), and waits in ``select`` without it.
While another thread has the turn, as during the C-STORE sub-operations
of a C-GET, the association counts as busy and the DUL reactor polls.
"""

from __future__ import annotations

import queue
import select
import ssl
import time
from typing import Any

from dicomvault.dimse.socket_turn import guard_socket_reads

# Empty polls, about a millisecond apart, before a thread starts to block.
IDLE_POLLS = 20
# The maximum wait of a blocked thread before it looks at the rest of its duties.
IDLE_WAIT_SECONDS = 0.1


def wait_when_idle(assoc: Any) -> None:
    """Make both reactor threads of ``assoc`` block while the association is idle.

    Call before the association starts, or on an established association
    of this process as a requestor.
    """
    _IdleWait(assoc)


# Put on the DIMSE message queue to wake the association reactor; never a message.
# Built at run time, so that it is not the (None, None) constant that pynetdicom
# puts there itself when an association ends.
_WAKE: tuple[None, None] = tuple([None, None])  # type: ignore[assignment]


class _IdleWait:
    """The replaced polling methods of one association and what they count."""

    def __init__(self, assoc: Any) -> None:
        self.turn = guard_socket_reads(assoc)
        self.dul = assoc.dul
        self.dimse = assoc.dimse
        self.poll_transport = self.turn.poll
        self.active_delay = self.dul._run_loop_delay
        self.transport_empty_polls = 0
        self.message_empty_polls = 0
        self.reactor_waiting = False
        self.dul._is_transport_event = self.is_transport_event
        self.dimse.get_msg = self.get_msg

    def is_transport_event(self) -> bool:
        """Poll the socket as pynetdicom does; when idle, wait on it instead of sleeping."""
        if self.poll_transport():
            return self._transport_active()
        if self.turn.is_taken():
            # Another thread reads the socket, so the association is busy.
            self.transport_empty_polls = 0
            self.dul._run_loop_delay = self.active_delay
            return False
        self.transport_empty_polls += 1
        if self.transport_empty_polls < IDLE_POLLS or not self._queues_empty():
            return False
        sock = getattr(self.dul.socket, "socket", None)
        if sock is None or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            return False
        # The wait below replaces the reactor's sleep between polls.
        self.dul._run_loop_delay = 0
        try:
            readable, _, _ = select.select([sock], [], [], IDLE_WAIT_SECONDS)
        except (OSError, ValueError):
            self.dul._run_loop_delay = self.active_delay
            return False  # closed meanwhile: the next poll reports it
        if readable and self.poll_transport():
            return self._transport_active()
        return False

    def get_msg(self, block: bool = False) -> Any:
        """Take the next DIMSE message as pynetdicom does; when idle, wait for one."""
        if block:
            return self._next_message(self.dimse.dimse_timeout, stop_on_wake=False)
        if self.message_empty_polls < IDLE_POLLS:
            item = self._next_message(0.0, stop_on_wake=True)
        else:
            self.reactor_waiting = True
            try:
                item = self._next_message(IDLE_WAIT_SECONDS, stop_on_wake=True)
            finally:
                self.reactor_waiting = False
        self.message_empty_polls = 0 if item[1] is not None else self.message_empty_polls + 1
        return item

    def _transport_active(self) -> bool:
        self.transport_empty_polls = 0
        self.dul._run_loop_delay = self.active_delay
        if self.reactor_waiting:
            # Let the association reactor look at what arrived, such as a release request.
            self.dimse.msg_queue.put(_WAKE)
        return True

    def _queues_empty(self) -> bool:
        return bool(self.dul.to_provider_queue.empty() and self.dul.event_queue.empty())

    def _next_message(self, timeout: float | None, stop_on_wake: bool) -> Any:
        """Return the next queued item, (None, None) if none comes within ``timeout``.

        A wake-up ends the wait with (None, None) when ``stop_on_wake``, and
        is skipped otherwise. None waits without end, 0 not at all.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                if deadline is None:
                    item = self.dimse.msg_queue.get()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        item = self.dimse.msg_queue.get(block=False)
                    else:
                        item = self.dimse.msg_queue.get(timeout=remaining)
            except queue.Empty:
                return (None, None)
            if item is not _WAKE:
                return item
            if stop_on_wake:
                return (None, None)
