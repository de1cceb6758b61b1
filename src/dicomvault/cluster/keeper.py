"""Renew the leases this process holds, in a thread of its own."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from dicomvault.cluster.leases import LeaseStore
from dicomvault.index.chunks import ChunkQueue

LOGGER = logging.getLogger(__name__)


class LeaseKeeper:
    """Holds named leases and the leases of claimed chunks, renewing them every third of their time.

    :meth:`hold` returns an event that is set if the lease is lost: another
    process took it over because this one failed to renew it in time (the
    database was unreachable, or the process was stalled). The work the
    lease covered must then stop, since the other process now does it.
    """

    def __init__(self, engine: Engine, seconds: float) -> None:
        self.store = LeaseStore(engine)
        self.chunks = ChunkQueue(engine)
        self.seconds = seconds
        self._held: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def owner(self) -> str:
        """The id this process holds its leases under."""
        return self.store.owner

    def start(self) -> None:
        """Start renewing in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and release the named leases still held."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        with self._lock:
            names = list(self._held)
            self._held.clear()
        for name in names:
            self._release_quietly(name)

    def hold(self, name: str) -> threading.Event | None:
        """Take the lease ``name`` if it is free; return its "lost" event, or None if taken.

        Raises
        ------
        sqlalchemy.exc.SQLAlchemyError
            If the database cannot be reached.
        """
        if not self.store.acquire(name, self.seconds):
            return None
        lost = threading.Event()
        with self._lock:
            self._held[name] = lost
        return lost

    def drop(self, name: str) -> None:
        """Stop renewing the lease ``name`` and release it."""
        with self._lock:
            self._held.pop(name, None)
        self._release_quietly(name)

    def renew_now(self) -> None:
        """Renew every lease once; sets the "lost" event of each one lost."""
        with self._lock:
            names = list(self._held)
        held = self.store.renew(names, self.seconds)
        lost = [name for name in names if name not in held]
        with self._lock:
            for name in lost:
                event = self._held.pop(name, None)
                if event is not None:
                    event.set()
        self.chunks.renew(self.owner, self.seconds)

    def _run(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.renew_now()
            except SQLAlchemyError as exc:
                LOGGER.error("Cannot renew the leases of %s: %s", self.owner, exc)

    def _release_quietly(self, name: str) -> None:
        try:
            self.store.release(name)
        except SQLAlchemyError as exc:
            LOGGER.warning("Cannot release lease %s; it expires by itself: %s", name, exc)
