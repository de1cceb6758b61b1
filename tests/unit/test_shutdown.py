"""The drain of serve: stop signals, the order of the listeners' steps, delay and deadline."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from dicomvault.config import ServerSettings
from dicomvault.shutdown import StopSignals, drain


class FakeListener:
    """Records the calls drain() makes, and takes ``busy_seconds`` in stop() unless aborted."""

    def __init__(self, name: str, calls: list[str], busy_seconds: float = 0.0) -> None:
        self.name = name
        self.calls = calls
        self.busy_seconds = busy_seconds
        self.timeouts: list[float | None] = []

    def stop_accepting(self) -> None:
        self.calls.append(f"{self.name}.stop_accepting")

    def stop(self, timeout: float | None = None, abort: threading.Event | None = None) -> None:
        self.calls.append(f"{self.name}.stop")
        self.timeouts.append(timeout)
        wait = min(self.busy_seconds, timeout or 0.0)
        if abort is not None:
            abort.wait(wait)
        else:
            time.sleep(wait)


def settings(delay: float = 0.0, drain_seconds: float = 5.0) -> ServerSettings:
    return ServerSettings(
        drain_delay=delay,
        drain_seconds=drain_seconds,
        lease_seconds=30.0,
        maintenance_interval=600.0,
        settings_poll_interval=10.0,
        readiness_timeout=1.0,
    )


@pytest.fixture
def installed_signals() -> Iterator[StopSignals]:
    """Stop signals installed for SIGTERM and SIGINT; the previous handlers come back after."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    signals = StopSignals()
    signals.install()
    yield signals
    for signum, handler in previous.items():
        signal.signal(signum, handler)


class TestStopSignals:
    def test_first_requests_drain(self, installed_signals: StopSignals) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

        assert installed_signals.stop_requested.wait(5)
        assert not installed_signals.force.is_set()

    def test_second_forces(self, installed_signals: StopSignals) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        assert installed_signals.stop_requested.wait(5)

        os.kill(os.getpid(), signal.SIGINT)

        assert installed_signals.force.wait(5)


class TestDrain:
    def test_all_stop_accepting_first(self) -> None:
        calls: list[str] = []
        listeners = [FakeListener("dimse", calls), FakeListener("http", calls)]

        drain(settings(), StopSignals(), listeners, lambda: calls.append("ingest.stop"))

        assert calls[:2] == ["dimse.stop_accepting", "http.stop_accepting"]
        assert calls.index("dimse.stop") < calls.index("http.stop")
        assert "ingest.stop" in calls

    def test_deadline_shared(self) -> None:
        calls: list[str] = []
        dimse = FakeListener("dimse", calls, busy_seconds=0.6)
        http = FakeListener("http", calls)

        drain(settings(drain_seconds=1.0), StopSignals(), [dimse, http])

        assert dimse.timeouts[0] == pytest.approx(1.0, abs=0.1)
        assert http.timeouts[0] is not None
        assert http.timeouts[0] == pytest.approx(0.4, abs=0.15)

    def test_delay_before_closing(self) -> None:
        calls: list[str] = []
        started = time.monotonic()

        drain(settings(delay=0.5), StopSignals(), [FakeListener("dimse", calls)])

        assert time.monotonic() - started >= 0.5
        assert calls == ["dimse.stop_accepting", "dimse.stop"]

    def test_force_ends_delay_and_wait(self) -> None:
        calls: list[str] = []
        signals = StopSignals()
        signals.stop_requested.set()
        signals.force.set()
        started = time.monotonic()

        drain(
            settings(delay=30, drain_seconds=30),
            signals,
            [FakeListener("dimse", calls, busy_seconds=30)],
        )

        assert time.monotonic() - started < 2
        assert calls == ["dimse.stop_accepting", "dimse.stop"]

    def test_also_stop_joined(self) -> None:
        finished = threading.Event()

        def stop_ingest() -> None:
            time.sleep(0.3)
            finished.set()

        drain(settings(drain_seconds=0.0), StopSignals(), [], stop_ingest)

        assert finished.is_set()
