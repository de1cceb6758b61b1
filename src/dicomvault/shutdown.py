"""Stop signals and the drain of ``dicomvault serve``.

The first SIGTERM or SIGINT starts a drain, and /ready responds with 503 at
once. After ``server.drain_delay`` seconds the DIMSE and HTTP listeners close,
so that new connections are refused. Associations and HTTP requests in flight
then get up to ``server.drain_seconds`` seconds to finish before they are
aborted. A second signal ends the waits at once.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Protocol

from dicomvault.config import ServerSettings

LOGGER = logging.getLogger(__name__)


class Listener(Protocol):
    """A server that can stop accepting and then wait for the work in flight."""

    def stop_accepting(self) -> None:
        """Close the listening sockets, and let the work in flight go on."""
        ...

    def stop(self, timeout: float | None = None, abort: threading.Event | None = None) -> None:
        """Wait up to ``timeout`` seconds for work in flight, or until ``abort``, then end it."""
        ...


class StopSignals:
    """Receives SIGTERM and SIGINT: the first requests a drain, a second a stop at once."""

    def __init__(self) -> None:
        self.stop_requested = threading.Event()
        self.force = threading.Event()

    def install(self) -> None:
        """Handle SIGTERM and SIGINT from now on; call from the main thread."""
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self.stop_requested.is_set():
            LOGGER.info("Received %s; stopping", name)
            self.stop_requested.set()
        elif not self.force.is_set():
            LOGGER.warning("Received %s again; ending the work in flight now", name)
            self.force.set()


def drain(
    settings: ServerSettings,
    signals: StopSignals,
    listeners: Sequence[Listener],
    also_stop: Callable[[], None] = lambda: None,
) -> None:
    """Close the listeners and wait for the work in flight, as the module docstring describes.

    Parameters
    ----------
    settings : ServerSettings
        ``drain_delay`` and ``drain_seconds``.
    signals : StopSignals
        Its ``force`` event ends the delay and the wait.
    listeners : Sequence of Listener
        Stopped in this order, but all stop accepting at the same time, and
        all share one deadline.
    also_stop : Callable
        Run on a thread of its own beside the wait, such as the stop of the
        indexing tasks, and waited for before returning, also past the
        deadline: it must bound its own time.
    """
    started = time.monotonic()
    if settings.drain_delay and not signals.force.is_set():
        LOGGER.info(
            "Draining: /ready responds with 503; the listeners close in %.0f s "
            "(server.drain_delay)",
            settings.drain_delay,
        )
        signals.force.wait(settings.drain_delay)

    for listener in listeners:
        listener.stop_accepting()
    deadline = time.monotonic() + settings.drain_seconds
    LOGGER.info(
        "Draining: listeners closed; work in flight gets up to %.0f s (server.drain_seconds)",
        settings.drain_seconds,
    )
    other = threading.Thread(target=also_stop, name="stop-ingest", daemon=True)
    other.start()
    for listener in listeners:
        listener.stop(max(0.0, deadline - time.monotonic()), abort=signals.force)
    other.join()

    if signals.force.is_set():
        LOGGER.warning(
            "Stopped after a second stop signal, %.1f s after the first", _since(started)
        )
    else:
        LOGGER.info("Drained in %.1f s", _since(started))


def _since(started: float) -> float:
    return time.monotonic() - started
