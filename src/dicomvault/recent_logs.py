"""A logging handler that keeps the newest log records in memory for the HTTP API."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import logging
import threading

LOGGER = logging.getLogger(__name__)

# Records below this level are not kept, even when the log output shows them:
# DEBUG lines would push the events an operator looks for out of the buffer.
MIN_LEVEL = logging.INFO


@dataclasses.dataclass(frozen=True)
class LogEvent:
    """One kept log record."""

    time: datetime.datetime
    level: str
    level_number: int
    logger: str
    message: str


class RecentLogHandler(logging.Handler):
    """Keeps the last ``capacity`` records at INFO or above; older ones are dropped.

    Each record is formatted when it is emitted, so later changes to the
    objects it refers to do not change what is shown.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(MIN_LEVEL)
        self.capacity = capacity
        self._events: collections.deque[LogEvent] = collections.deque(maxlen=capacity)
        # Copying a deque while another thread appends raises RuntimeError.
        self._events_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        """Format ``record`` and keep it, dropping the oldest kept record when full."""
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                error = record.exc_info[1]
                message = f"{message}: {type(error).__name__}: {error}"
            event = LogEvent(
                time=datetime.datetime.fromtimestamp(record.created, datetime.UTC),
                level=record.levelname,
                level_number=record.levelno,
                logger=record.name,
                message=message,
            )
        except Exception:  # logging must never raise into the code that logs
            self.handleError(record)
            return
        with self._events_lock:
            self._events.append(event)

    def events(self, min_level: int = MIN_LEVEL, limit: int | None = None) -> list[LogEvent]:
        """Return the kept events at ``min_level`` or above, newest first, at most ``limit``."""
        with self._events_lock:
            kept = list(self._events)
        selected = [event for event in reversed(kept) if event.level_number >= min_level]
        return selected if limit is None else selected[:limit]


def install_recent_log_handler(capacity: int) -> RecentLogHandler | None:
    """Attach a :class:`RecentLogHandler` to the root logger; None when ``capacity`` is 0."""
    if capacity <= 0:
        return None
    handler = RecentLogHandler(capacity)
    logging.getLogger().addHandler(handler)
    return handler
