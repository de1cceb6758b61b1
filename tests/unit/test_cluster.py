"""Unit tests for leases and the chunk queue of bucket tasks, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, select

from dicomvault.cluster.leases import LeaseStore
from dicomvault.index.chunks import MAX_ATTEMPTS, ChunkLostError, ChunkQueue, ListedPage
from dicomvault.index.schema import ingest_tasks
from dicomvault.index.tasks import TaskStore

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
    assert len(first) == 3 and len(second) == 2
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
    assert taken.pk == stalled.pk and taken.attempts == 2
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
    assert again.pk == claimed[1].pk and again.attempts == 1

    assert queue.cancel_queued(task_id) == 1
    counts = queue.counts(task_id)
    assert (counts.running, counts.cancelled, counts.queued) == (2, 1, 0)


def test_cancelled_task_offers_no_chunks(migrated_engine: Engine) -> None:
    task_id = bucket_task(migrated_engine, objects=2, per_chunk=1)
    TaskStore(migrated_engine).request_cancel(task_id)
    assert ChunkQueue(migrated_engine).claim("node-a", 30, 2) == []
