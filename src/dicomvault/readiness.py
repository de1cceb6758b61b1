"""Readiness of a server process: is it draining, and are its index database and storage usable?

Load balancers request ``GET /ready`` every few seconds, and anyone who can
reach the HTTP port may request it without credentials. So a result is reused
for ``CACHE_SECONDS``, and each check runs at most once at a time. A check
that hangs, such as a database connection waiting for a TCP timeout, is
reported as timed out after ``timeout`` seconds while it goes on in its own
thread. Results name the failed check with a fixed word. The error itself
goes only to the log, once per change of state.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from dicomvault.storage.base import Storage, StorageError, StorageFullError

LOGGER = logging.getLogger(__name__)

CACHE_SECONDS = 1.0
# The storage check writes and deletes an object under this prefix. A crash
# between the two leaves one object of PROBE_BYTES bytes per process.
PROBE_KEY_PREFIX = "readiness-probes"
PROBE_BYTES = b"dicomvault readiness probe\n"

OK = "ok"
FAILED = "failed"
TIMED_OUT = "timed out"
STORAGE_FULL = "full"


@dataclasses.dataclass(frozen=True)
class Readiness:
    """The outcome of a readiness check.

    ``status`` is "ready", "not ready" or "draining". ``checks`` maps each
    check ("database", "storage") to "ok", "failed", "timed out" or, for
    the storage, "full". It is empty while draining, when no check runs.
    """

    status: str
    checks: Mapping[str, str]

    @property
    def ready(self) -> bool:
        """True when the process should receive new work."""
        return self.status == "ready"


class ReadinessChecker:
    """Checks the index database and storage, and reports "draining" after start_draining().

    Parameters
    ----------
    engine : Engine
        The index database; the check reads its schema revision.
    storage : Storage
        The storage of received files; the check writes and deletes a small
        object under ``PROBE_KEY_PREFIX``.
    timeout : float
        Seconds a check may take before it counts as timed out.
    draining : threading.Event, optional
        Set when the process starts to drain; a new event when None.
    """

    def __init__(
        self,
        engine: Engine,
        storage: Storage,
        timeout: float,
        draining: threading.Event | None = None,
    ) -> None:
        self.timeout = timeout
        self._draining = draining if draining is not None else threading.Event()
        self._probes = {
            "database": _Probe("index database", lambda: _check_database(engine)),
            "storage": _Probe("storage", _storage_check(storage)),
        }
        self._lock = threading.Lock()
        self._last: Readiness | None = None
        self._last_at = 0.0

    @property
    def draining(self) -> bool:
        """True from :meth:`start_draining` on."""
        return self._draining.is_set()

    def start_draining(self) -> None:
        """Report "draining" from now on, so that load balancers send no new work."""
        self._draining.set()

    def check(self) -> Readiness:
        """Return whether the process is ready, running the checks unless a recent result exists.

        Takes up to ``timeout`` seconds. Never raises for a failing check.
        """
        if self.draining:
            return Readiness("draining", {})
        with self._lock:
            if self._last is not None and time.monotonic() - self._last_at < CACHE_SECONDS:
                return self._last
            for probe in self._probes.values():
                probe.start()
            deadline = time.monotonic() + self.timeout
            checks = {
                name: probe.result(max(0.0, deadline - time.monotonic()))
                for name, probe in self._probes.items()
            }
            ready = all(outcome == OK for outcome in checks.values())
            self._last = Readiness("ready" if ready else "not ready", checks)
            self._last_at = time.monotonic()
            return self._last


class _Probe:
    """Runs one check on a daemon thread, at most one run at a time, and logs changes.

    A check returns its outcome and, when it did not pass, the error for the log.
    """

    def __init__(self, description: str, check: Callable[[], tuple[str, str]]) -> None:
        self.description = description
        self._check = check
        self._done = threading.Event()
        self._done.set()
        self._outcome = (OK, "")
        self._reported = (OK, "")

    def start(self) -> None:
        """Start a run, unless the previous one is still going."""
        if not self._done.is_set():
            return
        self._done.clear()
        thread = threading.Thread(target=self._run, name=f"readiness {self.description}")
        thread.daemon = True
        thread.start()

    def result(self, timeout: float) -> str:
        """Wait up to ``timeout`` seconds for the run; return its outcome or "timed out".

        A change from the outcome returned before is logged: a failure or a
        timeout as a warning with the error, a recovery at INFO.
        """
        outcome = self._outcome if self._done.wait(timeout) else (TIMED_OUT, "")
        if outcome != self._reported:
            self._log_change(outcome)
            self._reported = outcome
        return outcome[0]

    def _log_change(self, outcome: tuple[str, str]) -> None:
        state, error = outcome
        if state == OK:
            LOGGER.info("Readiness check of the %s passed again", self.description)
        elif state == TIMED_OUT:
            LOGGER.warning(
                "Readiness check of the %s timed out; /ready answers 503", self.description
            )
        else:
            LOGGER.warning(
                "Readiness check of the %s failed; /ready answers 503: %s", self.description, error
            )

    def _run(self) -> None:
        try:
            self._outcome = self._check()
        except Exception as exc:
            LOGGER.exception("Readiness check of the %s failed unexpectedly", self.description)
            self._outcome = (FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            self._done.set()


def _check_database(engine: Engine) -> tuple[str, str]:
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except SQLAlchemyError as exc:
        return FAILED, _first_line(exc)
    return OK, ""


def _storage_check(storage: Storage) -> Callable[[], tuple[str, str]]:
    # One key per process, so that processes sharing a storage never delete
    # each other's probe while it is being written.
    key = f"{PROBE_KEY_PREFIX}/{uuid.uuid4().hex}.probe"

    def check() -> tuple[str, str]:
        try:
            storage.put(key, [PROBE_BYTES])
            storage.delete(key)
        except StorageFullError as exc:
            return STORAGE_FULL, _first_line(exc)
        except (StorageError, OSError) as exc:
            return FAILED, _first_line(exc)
        return OK, ""

    return check


def _first_line(exc: Exception) -> str:
    # SQLAlchemy appends the statement and a link on further lines.
    message = str(exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__
