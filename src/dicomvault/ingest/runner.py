"""Run one indexing task from start to its final status."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from dicomvault.index.tasks import TaskCounts, TaskRecord
from dicomvault.ingest.indexer import FolderIndexer, IndexingError, IngestContext
from dicomvault.ingest.jobs import Mode

LOGGER = logging.getLogger(__name__)


def run_index_task(
    context: IngestContext,
    task_id: int,
    folder: Path,
    mode: Mode,
    prune: bool,
    cancel: threading.Event,
    on_progress: Callable[[TaskCounts], None] | None = None,
    resumable: bool = False,
) -> TaskRecord:
    """Index ``folder`` once as task ``task_id`` and return the finished task.

    The final status is "completed" (also when some files failed: the report
    lists them), "cancelled", or "failed" when the index database or the
    storage failed; the message then gives the reason. Never raises for one file.

    A ``resumable`` task stopped by ``cancel`` without a cancellation
    request in the index (its process stops, or lost its lease) is left
    running, for another process to resume; the task is returned as it is.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        If the database fails while the task is started or finished.
    """
    counts = TaskCounts()
    context.tasks.start(task_id)
    LOGGER.info("Indexing task %d started: %s %s", task_id, mode, folder)
    status, message = "completed", ""
    indexer = FolderIndexer(context, folder, mode, task_id, counts, cancel, on_progress)
    try:
        if not indexer.run_pass(prune=prune):
            if resumable and not context.tasks.cancel_requested(task_id):
                context.tasks.save_progress(task_id, counts)
                LOGGER.info("Indexing task %d stopped here; another process resumes it", task_id)
                record = context.tasks.get(task_id)
                assert record is not None
                return record
            status = "cancelled"
    except (IndexingError, SQLAlchemyError, OSError) as exc:
        LOGGER.error("Indexing task %d failed: %s", task_id, exc)
        status, message = "failed", str(exc)
    except Exception as exc:
        LOGGER.exception("Indexing task %d failed unexpectedly", task_id)
        status, message = "failed", f"Unexpected error: {exc}"
    context.tasks.finish(task_id, status, counts, message)
    record = context.tasks.get(task_id)
    assert record is not None
    return record
