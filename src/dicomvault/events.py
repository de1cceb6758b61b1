"""In-process events that audit, metrics and logs subscribe to.

The store and query paths publish what happened; they never call the
subscribers' concerns inline. A subscriber that raises is logged and does not
affect the publisher or the other subscribers.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

LOGGER = logging.getLogger(__name__)

EventT = TypeVar("EventT")


@dataclasses.dataclass(frozen=True)
class InstanceStored:
    """An instance is durable and indexed."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    size: int
    source_ae_title: str
    replaced: bool


@dataclasses.dataclass(frozen=True)
class InstanceRejected:
    """A store request failed; nothing of it was kept."""

    sop_instance_uid: str
    source_ae_title: str
    reason: str


@dataclasses.dataclass(frozen=True)
class QueryPerformed:
    """A query ran; ``matches`` is the number of results returned."""

    level: str
    keys: tuple[str, ...]
    matches: int
    source_ae_title: str


class EventBus:
    """Delivers published events to the subscribers of their type, synchronously."""

    def __init__(self) -> None:
        self._subscribers: dict[type, list[Callable[[Any], None]]] = defaultdict(list)
        self._lock = threading.Lock()

    def subscribe(self, event_type: type[EventT], handler: Callable[[EventT], None]) -> None:
        """Call ``handler`` for every published event of ``event_type``."""
        with self._lock:
            self._subscribers[event_type].append(handler)

    def publish(self, event: object) -> None:
        """Deliver ``event`` to its subscribers, logging any that fail."""
        for handler in list(self._subscribers.get(type(event), ())):
            try:
                handler(event)
            except Exception:
                LOGGER.exception("Event subscriber %r failed on %s", handler, type(event).__name__)
