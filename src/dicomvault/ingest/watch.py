"""Watch a folder: index files as they arrive, once they are complete.

The folder is scanned every ``ingest.watch_interval`` seconds (polling, so
it works on network file systems too). A file is read once its size and
modification time have not changed for ``ingest.settle_seconds``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from dicomvault.index.tasks import TaskCounts
from dicomvault.ingest.indexer import FolderIndexer, IndexingError, IngestContext
from dicomvault.ingest.jobs import Mode

LOGGER = logging.getLogger(__name__)


class FolderWatcher:
    """Indexes one folder again and again until :meth:`stop`, as one task of kind "watch"."""

    def __init__(
        self,
        context: IngestContext,
        folder: Path,
        mode: Mode = Mode.IN_PLACE,
        lost: threading.Event | None = None,
    ) -> None:
        self.context = context
        self.folder = folder
        self.mode = mode
        # Set when the process lost the folder's lease: the watch then stops as "stopped".
        self.lost = lost or threading.Event()
        self.counts = TaskCounts()
        self.cancel = threading.Event()
        self._stopping = False
        self.task_id = context.tasks.create("watch", str(folder), str(mode), False)

    def run(self) -> str:
        """Scan and index until stopped or cancelled; return the final status.

        The status is "stopped" after :meth:`stop` and "cancelled" after a
        cancellation request through the task store.
        """
        self.context.tasks.start(self.task_id)
        LOGGER.info("Watching %s (task %d)", self.folder, self.task_id)
        indexer = FolderIndexer(
            self.context,
            self.folder,
            self.mode,
            self.task_id,
            self.counts,
            self.cancel,
            watching=True,
        )
        interval = self.context.settings.ingest.watch_interval
        while not self.cancel.is_set() and not self.lost.is_set():
            try:
                indexer.run_pass()
            except (IndexingError, SQLAlchemyError, OSError) as exc:
                # A database outage should not end the watch; the next scan retries.
                LOGGER.error(
                    "Watching %s: scan failed, retrying in %.0f s: %s", self.folder, interval, exc
                )
            self.cancel.wait(interval)
        status = "stopped" if self._stopping or self.lost.is_set() else "cancelled"
        self.context.tasks.finish(self.task_id, status, self.counts)
        LOGGER.info("Stopped watching %s (task %d)", self.folder, self.task_id)
        return status

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch it is writing."""
        self._stopping = True
        self.cancel.set()
