"""Readiness checks: the index database, the storage, draining, caching and timeouts."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import OperationalError

from dicomvault import readiness
from dicomvault.readiness import PROBE_KEY_PREFIX, ReadinessChecker
from dicomvault.storage.base import StorageFullError
from dicomvault.storage.filesystem import FilesystemStorage

TIMEOUT_SECONDS = 0.5


@pytest.fixture(scope="module")
def index_backend() -> str:
    """The checks run one trivial query; test_index covers both back-ends' SQL."""
    return "sqlite"


@pytest.fixture
def storage(tmp_path: Path) -> FilesystemStorage:
    return FilesystemStorage(tmp_path / "storage")


@pytest.fixture
def no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readiness, "CACHE_SECONDS", 0.0)


@pytest.fixture
def unreachable_engine(tmp_path: Path) -> Iterator[Engine]:
    """An engine on a SQLite file in a folder that does not exist, so every connect fails."""
    engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'index.sqlite'}")
    yield engine
    engine.dispose()


class HangingEngine:
    """A fake Engine whose connect() blocks until released, and counts its calls."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.connects = 0

    def connect(self) -> Any:
        self.connects += 1
        self.release.wait(10)
        raise OperationalError("connect", {}, Exception("released by the test"))


class FullStorage:
    """A fake Storage whose every write fails for lack of space."""

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        raise StorageFullError(f"No space left to store {key}")

    def delete(self, key: str) -> None:
        pass


class TestChecks:
    def test_ready(self, migrated_engine: Engine, storage: FilesystemStorage) -> None:
        result = ReadinessChecker(migrated_engine, storage, TIMEOUT_SECONDS).check()

        assert result.ready
        assert result.status == "ready"
        assert result.checks == {"database": "ok", "storage": "ok"}

    def test_probe_object_removed(
        self, migrated_engine: Engine, storage: FilesystemStorage
    ) -> None:
        ReadinessChecker(migrated_engine, storage, TIMEOUT_SECONDS).check()

        assert list(storage.iter_keys()) == []
        assert list((storage.root / PROBE_KEY_PREFIX).iterdir()) == []

    def test_database_down(
        self,
        unreachable_engine: Engine,
        storage: FilesystemStorage,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        with caplog.at_level(logging.WARNING, logger="dicomvault.readiness"):
            result = ReadinessChecker(unreachable_engine, storage, TIMEOUT_SECONDS).check()

        assert not result.ready
        assert result.status == "not ready"
        assert result.checks == {"database": "failed", "storage": "ok"}
        assert "Readiness check of the index database failed" in caplog.text
        assert "unable to open database file" in caplog.text

    def test_storage_unwritable(self, migrated_engine: Engine, tmp_path: Path) -> None:
        storage = FilesystemStorage(tmp_path / "storage")
        # A file where the probe's folder should be; unlike permissions, this stops root too.
        (storage.root / PROBE_KEY_PREFIX).write_bytes(b"")

        result = ReadinessChecker(migrated_engine, storage, TIMEOUT_SECONDS).check()

        assert result.status == "not ready"
        assert result.checks == {"database": "ok", "storage": "failed"}

    def test_storage_full(self, migrated_engine: Engine) -> None:
        result = ReadinessChecker(migrated_engine, FullStorage(), TIMEOUT_SECONDS).check()  # type: ignore[arg-type]

        assert result.checks == {"database": "ok", "storage": "full"}

    def test_hanging_database_timed_out(self, storage: FilesystemStorage, no_cache: None) -> None:
        engine = HangingEngine()
        checker = ReadinessChecker(engine, storage, TIMEOUT_SECONDS)  # type: ignore[arg-type]
        try:
            started = time.monotonic()
            first = checker.check()
            second = checker.check()
            elapsed = time.monotonic() - started
        finally:
            engine.release.set()

        assert first.checks == {"database": "timed out", "storage": "ok"}
        assert second.checks["database"] == "timed out"
        assert elapsed < 4 * TIMEOUT_SECONDS
        assert engine.connects == 1, "a second probe started while the first still hung"


class TestDraining:
    def test_draining_reported(self, migrated_engine: Engine, storage: FilesystemStorage) -> None:
        checker = ReadinessChecker(migrated_engine, storage, TIMEOUT_SECONDS)

        checker.start_draining()
        result = checker.check()

        assert checker.draining
        assert not result.ready
        assert result.status == "draining"
        assert result.checks == {}

    def test_shared_event(self, migrated_engine: Engine, storage: FilesystemStorage) -> None:
        stop_requested = threading.Event()
        checker = ReadinessChecker(
            migrated_engine, storage, TIMEOUT_SECONDS, draining=stop_requested
        )
        assert checker.check().ready

        stop_requested.set()

        assert checker.check().status == "draining"


class TestRepeatedChecks:
    def test_result_cached(self, migrated_engine: Engine, tmp_path: Path) -> None:
        storage = FilesystemStorage(tmp_path / "storage")
        checker = ReadinessChecker(migrated_engine, storage, TIMEOUT_SECONDS)
        first = checker.check()
        (storage.root / PROBE_KEY_PREFIX).rmdir()
        (storage.root / PROBE_KEY_PREFIX).write_bytes(b"")

        second = checker.check()

        assert second is first

    def test_failure_logged_once(
        self,
        unreachable_engine: Engine,
        storage: FilesystemStorage,
        no_cache: None,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        checker = ReadinessChecker(unreachable_engine, storage, TIMEOUT_SECONDS)

        with caplog.at_level(logging.INFO, logger="dicomvault.readiness"):
            for _ in range(3):
                checker.check()

        failures = [r for r in caplog.records if "index database failed" in r.getMessage()]
        assert len(failures) == 1

    def test_recovery_logged(
        self,
        migrated_engine: Engine,
        tmp_path: Path,
        no_cache: None,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        storage = FilesystemStorage(tmp_path / "storage")
        blocker = storage.root / PROBE_KEY_PREFIX
        blocker.write_bytes(b"")
        checker = ReadinessChecker(migrated_engine, storage, TIMEOUT_SECONDS)

        with caplog.at_level(logging.INFO, logger="dicomvault.readiness"):
            failed = checker.check()
            blocker.unlink()
            recovered = checker.check()

        assert failed.checks["storage"] == "failed"
        assert recovered.checks["storage"] == "ok"
        assert "Readiness check of the storage passed again" in caplog.text
