"""Run a bucket task from the foreground, as ``dicomvault index s3://...`` does.

The calling process works as one more node: it leads the task while it
holds the task's lease, and indexes chunks with its own worker processes,
beside any server processes sharing the index. It returns once the task
has finished, whoever finished it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dicomvault.cluster.keeper import LeaseKeeper
from dicomvault.index.tasks import TaskCounts, TaskRecord
from dicomvault.ingest.bucket_task import POLL_SECONDS, BucketTaskLeader
from dicomvault.ingest.chunk_runner import ChunkRunner
from dicomvault.ingest.indexer import IngestContext

LOGGER = logging.getLogger(__name__)


def run_bucket_task(
    context: IngestContext,
    task_id: int,
    cancel: threading.Event,
    on_progress: Callable[[TaskCounts], None] | None = None,
) -> TaskRecord:
    """Help run bucket task ``task_id`` until it has finished; return the finished task.

    Setting ``cancel`` requests the cancellation of the task in the index,
    for every process working on it.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        If the index database fails.
    """
    keeper = LeaseKeeper(context.engine, context.settings.server.lease_seconds)
    keeper.start()
    runner = ChunkRunner(context, keeper.owner)
    runner.start()
    name = f"task:{task_id}"
    finished = threading.Event()
    forwarder = threading.Thread(
        target=_forward_cancel, args=(context, task_id, cancel, finished), daemon=True
    )
    forwarder.start()
    never = threading.Event()  # the leader stops only when the task ends or its lease is lost
    try:
        while True:
            record = context.tasks.get(task_id)
            if record is None:
                raise LookupError(f"Task {task_id} was removed from the index")
            if record.finished_at is not None:
                return record
            lost = keeper.hold(name)
            if lost is not None:
                try:
                    BucketTaskLeader(context, record, never, lost, on_progress).run()
                finally:
                    keeper.drop(name)
                continue
            # Another process leads the task; this one indexes chunks and shows progress.
            if on_progress is not None:
                on_progress(record.counts)
            finished.wait(POLL_SECONDS)
    finally:
        finished.set()
        runner.stop()
        keeper.stop()


def _forward_cancel(
    context: IngestContext, task_id: int, cancel: threading.Event, finished: threading.Event
) -> None:
    """Request the cancellation of the task in the index once ``cancel`` is set."""
    while not finished.is_set():
        if cancel.wait(0.2):
            try:
                context.tasks.request_cancel(task_id)
            except Exception as exc:  # the leader's own polls report database failures
                LOGGER.error("Cannot request the cancellation of task %d: %s", task_id, exc)
            return
