"""Unit tests for leases and the chunk queue of bucket tasks, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, update

from dicomvault.cluster.leases import LeaseStore
from dicomvault.cluster.maintenance import Maintenance
from dicomvault.config import load_settings
from dicomvault.index.chunks import MAX_ATTEMPTS, ChunkLostError, ChunkQueue, ListedPage
from dicomvault.index.schema import ingest_tasks, sessions
from dicomvault.index.tasks import TaskStore
from dicomvault.index.users import UserStore
from dicomvault.ingest.manager import TaskManager
from dicomvault.ingest.pool import ReaderPool
from dicomvault.storage.filesystem import FilesystemStorage
from dicomvault.users import Role
from tests.support.network import wait_until
from tests.unit.test_ingest_indexer import make_context

SHORT = 0.3  # seconds; long enough for the steps between, short enough to wait out


def test_lease_held_until_expiry(migrated_engine: Engine) -> None:
    first = LeaseStore(migrated_engine, owner="node-a")
    second = LeaseStore(migrated_engine, owner="node-b")

    assert first.acquire("task:1", SHORT)
    assert not second.acquire("task:1", SHORT)
    assert first.acquire("task:1", SHORT), "the holder may take its own lease again"
    assert first.holder("task:1") == "node-a"

    time.sleep(SHORT + 0.1)
    assert first.holder("task:1") is None
    assert second.acquire("task:1", 30)
    assert first.renew(["task:1"], 30) == set(), "a lease taken over is not renewed"
    assert second.renew(["task:1"], 30) == {"task:1"}


def test_released_lease_is_free_at_once(migrated_engine: Engine) -> None:
    first = LeaseStore(migrated_engine, owner="node-a")
    second = LeaseStore(migrated_engine, owner="node-b")
    assert first.acquire("watch:/srv/in", 30)
    second.release("watch:/srv/in")  # not the holder: nothing happens
    assert not second.acquire("watch:/srv/in", 30)
    first.release("watch:/srv/in")
    assert second.acquire("watch:/srv/in", 30)


def bucket_task(engine: Engine, objects: int, per_chunk: int) -> int:
    task_id = TaskStore(engine).create("index", "s3://b/p/", "in_place", False, resumable=True)
    TaskStore(engine).start(task_id)
    jobs = [(f"s3://b/p/{number:04d}", 10, f"etag{number}") for number in range(objects)]
    chunks = [jobs[start : start + per_chunk] for start in range(0, objects, per_chunk)]
    ChunkQueue(engine).add_page(task_id, ListedPage(chunks, objects + 2, 2, "p/last"))
    return task_id


def task_counts(engine: Engine, task_id: int) -> tuple[int, int, int, int]:
    with engine.connect() as connection:
        row = connection.execute(select(ingest_tasks).where(ingest_tasks.c.pk == task_id)).one()
    return row.files_found, row.files_skipped, row.files_indexed, row.files_failed


def test_claims_never_overlap(migrated_engine: Engine) -> None:
    task_id = bucket_task(migrated_engine, objects=10, per_chunk=2)
    queue = ChunkQueue(migrated_engine)

    first = queue.claim("node-a", 30, 3)
    second = queue.claim("node-b", 30, 3)
    assert len(first) == 3
    assert len(second) == 2
    assert {c.pk for c in first}.isdisjoint(c.pk for c in second)
    assert first[0].jobs[0] == ("s3://b/p/0000", 10, "etag0")
    assert queue.claim("node-c", 30, 3) == []
    assert queue.counts(task_id).running == 5
    assert queue.listed_until(task_id) == "p/last"
    assert task_counts(migrated_engine, task_id)[:2] == (12, 2)


def test_completion_counts_once_for_holder(migrated_engine: Engine) -> None:
    task_id = bucket_task(migrated_engine, objects=4, per_chunk=2)
    queue = ChunkQueue(migrated_engine)
    chunk, other = queue.claim("node-a", 30, 2)
    counts = {"indexed": 2, "failed": 0, "ignored": 0, "pending": 0}

    with migrated_engine.begin() as connection:
        ChunkQueue.complete(connection, chunk.pk, "node-a", task_id, counts)
    with pytest.raises(ChunkLostError), migrated_engine.begin() as connection:
        ChunkQueue.complete(connection, chunk.pk, "node-a", task_id, counts)
    with pytest.raises(ChunkLostError), migrated_engine.begin() as connection:
        ChunkQueue.complete(connection, other.pk, "node-b", task_id, counts)

    assert task_counts(migrated_engine, task_id)[2] == 2
    assert queue.counts(task_id).done == 1
    assert queue.counts(task_id).running == 1


def test_expired_chunk_claimed_again(migrated_engine: Engine) -> None:
    task_id = bucket_task(migrated_engine, objects=2, per_chunk=2)
    queue = ChunkQueue(migrated_engine)
    (stalled,) = queue.claim("node-a", SHORT, 1)
    assert queue.claim("node-b", 30, 1) == []

    time.sleep(SHORT + 0.1)
    (taken,) = queue.claim("node-b", 30, 1)
    assert taken.pk == stalled.pk
    assert taken.attempts == 2
    counts = {"indexed": 2, "failed": 0, "ignored": 0, "pending": 0}
    with pytest.raises(ChunkLostError), migrated_engine.begin() as connection:
        ChunkQueue.complete(connection, stalled.pk, "node-a", task_id, counts)
    with migrated_engine.begin() as connection:
        ChunkQueue.complete(connection, taken.pk, "node-b", task_id, counts)
    assert queue.counts(task_id).open == 0


def test_renewed_chunk_kept(migrated_engine: Engine) -> None:
    bucket_task(migrated_engine, objects=2, per_chunk=2)
    queue = ChunkQueue(migrated_engine)
    queue.claim("node-a", SHORT, 1)
    assert queue.renew("node-a", 30) == 1
    time.sleep(SHORT + 0.1)
    assert queue.claim("node-b", 30, 1) == []


def test_failing_chunk_given_up_with_report(migrated_engine: Engine) -> None:
    task_id = bucket_task(migrated_engine, objects=3, per_chunk=3)
    queue = ChunkQueue(migrated_engine)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        (chunk,) = queue.claim("node-a", 30, 1)
        assert chunk.attempts == attempt
        given_up = queue.release(chunk, "node-a", "The index database failed: disk I/O error")
        assert given_up is (attempt == MAX_ATTEMPTS)

    assert queue.claim("node-a", 30, 1) == []
    assert queue.counts(task_id).failed == 1
    assert task_counts(migrated_engine, task_id)[3] == 3
    files = TaskStore(migrated_engine).files(task_id)
    assert [f.path for f in files] == ["s3://b/p/0000", "s3://b/p/0001", "s3://b/p/0002"]
    assert all("disk I/O error" in f.reason and f.outcome == "failed" for f in files)


def test_chunks_given_back_and_cancelled(migrated_engine: Engine) -> None:
    task_id = bucket_task(migrated_engine, objects=6, per_chunk=2)
    queue = ChunkQueue(migrated_engine)
    claimed = queue.claim("node-a", 30, 2)
    queue.give_back(claimed[1:], "node-a")
    assert queue.counts(task_id).queued == 2
    (again,) = queue.claim("node-b", 30, 1)
    assert again.pk == claimed[1].pk
    assert again.attempts == 1

    assert queue.cancel_queued(task_id) == 1
    counts = queue.counts(task_id)
    assert (counts.running, counts.cancelled, counts.queued) == (2, 1, 0)


def test_cancelled_task_offers_no_chunks(migrated_engine: Engine) -> None:
    task_id = bucket_task(migrated_engine, objects=2, per_chunk=1)
    TaskStore(migrated_engine).request_cancel(task_id)
    assert ChunkQueue(migrated_engine).claim("node-a", 30, 2) == []


def test_maintenance_runs_once_per_round(migrated_engine: Engine, tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path / "storage")
    settings = load_settings(environ={}, overrides={"storage.data_dir": str(tmp_path)}).server
    first = Maintenance(migrated_engine, storage, settings)
    second = Maintenance(migrated_engine, storage, settings)
    second.leases = LeaseStore(migrated_engine, owner="node-b")
    users = UserStore(migrated_engine)
    user = users.add("reader", Role.USER, "a long enough password")
    session_id, _ = users.create_session(user)
    with migrated_engine.begin() as connection:
        connection.execute(update(sessions).values(expires_at=datetime.datetime(2000, 1, 1)))

    assert first.run_if_due()
    assert not second.run_if_due(), "the other process skips the round"
    assert users.get_session(session_id) is None
    with migrated_engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(sessions)).scalar() == 0


def test_watched_folder_scanned_by_one_manager(
    migrated_engine: Engine, tmp_path: Path, pool: ReaderPool
) -> None:
    folder = tmp_path / "root" / "incoming"
    folder.mkdir(parents=True)
    managers = []
    for name in ("a", "b"):
        context = make_context(
            tmp_path / f"data-{name}",
            migrated_engine,
            pool,
            ingest__import_roots=[str(tmp_path / "root")],
            ingest__watch_interval=0.2,
            server__lease_seconds=3.0,
        )
        manager = TaskManager(context)
        manager.keeper.store.owner = f"node-{name}"
        managers.append(manager)
    managers[0].start()
    managers[0].watch([folder])
    assert wait_until(lambda: watch_statuses(migrated_engine) == ["running"], 10)
    managers[1].start()
    managers[1].watch([folder])
    time.sleep(1.0)
    assert watch_statuses(migrated_engine) == ["running"], "the second manager stands by"

    managers[0].stop(10)
    # The stopped manager released its lease, so the other one takes the folder over.
    assert wait_until(lambda: watch_statuses(migrated_engine) == ["running", "stopped"], 10)
    managers[1].stop(10)


def watch_statuses(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(ingest_tasks.c.status).where(ingest_tasks.c.kind == "watch")
        ).scalars()
        return sorted(rows)
