"""Count log records at WARNING and above, as a metric of the errors a process survived."""

from __future__ import annotations

import logging

from prometheus_client import Counter

LOGGER = logging.getLogger(__name__)


class LogCounter(logging.Handler):
    """A logging handler that counts records by level name and writes nothing.

    Install it on the root logger to count the records of every logger that
    propagates there, dicomvault's, pynetdicom's and uvicorn's alike.
    """

    def __init__(self, counter: Counter) -> None:
        super().__init__(level=logging.WARNING)
        self.counter = counter
        for name in ("WARNING", "ERROR", "CRITICAL"):
            counter.labels(name)  # reported as 0 until the first record

    def emit(self, record: logging.LogRecord) -> None:
        """Count ``record``."""
        self.counter.labels(record.levelname).inc()
