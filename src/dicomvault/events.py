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
    """A query ran; ``matches`` is the number of results returned.

    A C-FIND names its calling AE title; a QIDO-RS search names the
    authenticated user and leaves ``source_ae_title`` empty. ``address`` is
    the client's network address.
    """

    level: str
    keys: tuple[str, ...]
    matches: int
    source_ae_title: str
    address: str = ""
    user: str = ""


def log_store_events(bus: EventBus) -> None:
    """Log one INFO line per stored instance and one WARNING per rejected one."""

    def stored(event: InstanceStored) -> None:
        action = "Replaced" if event.replaced else "Stored"
        LOGGER.info(
            "%s %s (%s) of study %s from %s, %s bytes",
            action,
            event.sop_instance_uid,
            _sop_class_name(event.sop_class_uid),
            event.study_instance_uid,
            event.source_ae_title,
            event.size,
        )

    bus.subscribe(InstanceStored, stored)


def _sop_class_name(uid: str) -> str:
    # Imported here, so that commands that never log a store start without pydicom.
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name != uid else uid


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
