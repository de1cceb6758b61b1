"""Group commit: concurrent stores indexed in shared transactions, with the outcomes of one by one.

Runs on SQLite and PostgreSQL; the archive uses group commit on SQLite only,
but the class works on both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from dicomvault.archive import Archive, StoreResult
from dicomvault.dicom.header import describe_instance, read_header
from dicomvault.index.group_commit import GroupCommit
from dicomvault.index.schema import instances
from dicomvault.index.writer import (
    DuplicateInstanceError,
    IndexOutcome,
    IndexWriter,
    StoredInstance,
)
from tests.support.datasets import encode_dataset, make_instance, new_uid

WAIT_SECONDS = 10.0


def stored_instance(number: int, sop_instance_uid: str = "") -> StoredInstance:
    ds = make_instance(SOPInstanceUID=sop_instance_uid or new_uid())
    header = describe_instance(
        read_header(encode_dataset(ds), ExplicitVRLittleEndian), ExplicitVRLittleEndian
    )
    return StoredInstance(header, f"00/00/key-{number}.dcm", 100, "GROUPTEST")


def run_as_one_group(
    committer: GroupCommit, items: list[StoredInstance], replace: bool = True
) -> list[IndexOutcome | BaseException]:
    """Queue each item from its own thread while the turn is held; then one thread indexes all."""
    results: list[IndexOutcome | BaseException] = [RuntimeError("no result")] * len(items)

    def add(index: int) -> None:
        try:
            results[index] = committer.add_instance(items[index], replace=replace)
        except BaseException as exc:  # handed to the test
            results[index] = exc

    threads = [threading.Thread(target=add, args=(i,)) for i in range(len(items))]
    with committer._turn:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + WAIT_SECONDS
        while len(committer._queue) < len(items) and time.monotonic() < deadline:
            time.sleep(0.01)
    for thread in threads:
        thread.join(WAIT_SECONDS)
    return results


def count_instances(archive: Archive) -> int:
    with archive.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(instances)).scalar_one())


class TestGroupCommit:
    def test_queued_instances_share_one_transaction(
        self, archive: Archive, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        committer = GroupCommit(archive.writer)
        calls: list[int] = []
        add_instances = IndexWriter.add_instances

        def counting(self: IndexWriter, stored: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(len(stored))
            return add_instances(self, stored, *args, **kwargs)

        monkeypatch.setattr(IndexWriter, "add_instances", counting)
        results = run_as_one_group(committer, [stored_instance(n) for n in range(8)])

        assert calls == [8]
        assert all(isinstance(result, IndexOutcome) for result in results)
        assert count_instances(archive) == 8

    def test_same_instance_twice_replaces(self, archive: Archive) -> None:
        committer = GroupCommit(archive.writer)
        uid = new_uid()
        first, second = stored_instance(1, uid), stored_instance(2, uid)

        results = run_as_one_group(committer, [first, second])

        outcomes = sorted(
            (result for result in results if isinstance(result, IndexOutcome)),
            key=lambda outcome: outcome.replaced,
        )
        assert len(outcomes) == 2
        assert outcomes[0] == IndexOutcome(replaced=False, replaced_storage_key=None)
        assert outcomes[1].replaced
        with archive.engine.connect() as connection:
            key = connection.execute(select(instances.c.storage_key)).scalar_one()
        assert outcomes[1].replaced_storage_key in {first.storage_key, second.storage_key}
        assert key != outcomes[1].replaced_storage_key

    def test_duplicate_rejected_alone(self, archive: Archive) -> None:
        committer = GroupCommit(archive.writer)
        uid = new_uid()
        committer.add_instance(stored_instance(1, uid), replace=False)

        results = run_as_one_group(
            committer, [stored_instance(2, uid), stored_instance(3)], replace=False
        )

        assert sum(isinstance(r, DuplicateInstanceError) for r in results) == 1
        assert sum(isinstance(r, IndexOutcome) for r in results) == 1
        assert count_instances(archive) == 2

    def test_failed_group_retried_one_by_one(
        self, archive: Archive, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        committer = GroupCommit(archive.writer)

        def failing(self: IndexWriter, *args: Any, **kwargs: Any) -> Any:
            raise OperationalError("INSERT ...", {}, Exception("disk I/O error"))

        monkeypatch.setattr(IndexWriter, "add_instances", failing)
        results = run_as_one_group(committer, [stored_instance(n) for n in range(3)])

        assert all(isinstance(result, IndexOutcome) for result in results)
        assert count_instances(archive) == 3


def test_concurrent_stores_all_indexed(make_archive: Callable[..., Archive]) -> None:
    archive = make_archive()
    results: list[StoreResult] = []
    lock = threading.Lock()

    def store_some() -> None:
        for _ in range(5):
            result = archive.store(encode_dataset(make_instance()), ExplicitVRLittleEndian)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=store_some) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_SECONDS * 6)

    assert len(results) == 60
    assert count_instances(archive) == 60
