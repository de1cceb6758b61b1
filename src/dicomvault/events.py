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
    """An instance is durable and indexed.

    ``service`` is the protocol that delivered it ("C-STORE", "STOW-RS"),
    empty when unknown. ``duration`` is the seconds the archive took to
    parse, write and index it, without the network transfer.
    """

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    size: int
    source_ae_title: str
    replaced: bool
    service: str = ""
    duration: float = 0.0


@dataclasses.dataclass(frozen=True)
class InstanceRejected:
    """A store request failed; nothing of it was kept.

    ``reason`` is the error message for people. ``category`` is one of a
    few fixed words for counting (see ``Archive.store``), and ``service``
    is as in :class:`InstanceStored`.
    """

    sop_instance_uid: str
    source_ae_title: str
    reason: str
    category: str = ""
    service: str = ""


@dataclasses.dataclass(frozen=True)
class QueryPerformed:
    """A query ran; ``matches`` is the number of results returned.

    A C-FIND names its calling AE title; a QIDO-RS search names the
    authenticated user and leaves ``source_ae_title`` empty. ``address`` is
    the client's network address. ``service`` is "C-FIND", "QIDO-RS" or
    "console", and ``duration`` the seconds from the request to the last
    match, or 0.0 when not measured. ``failed`` is true when the index
    database failed during the query.
    """

    level: str
    keys: tuple[str, ...]
    matches: int
    source_ae_title: str
    address: str = ""
    user: str = ""
    service: str = ""
    duration: float = 0.0
    failed: bool = False


@dataclasses.dataclass(frozen=True)
class RetrievePerformed:
    """A C-MOVE or C-GET request finished, successfully or not.

    ``status`` is the Status of the final response, None when an error
    ended the request before one was sent. The counts are the request's
    C-STORE sub-operations by outcome. ``size`` is the stored size in bytes
    of the instances sent with success or a warning. A file converted for
    the peer may have another size on the wire. ``duration`` is the seconds
    from the request to the final response.
    """

    operation: str
    source_ae_title: str
    status: int | None
    completed: int
    failed: int
    warning: int
    size: int
    duration: float


@dataclasses.dataclass(frozen=True)
class AssociationAccepted:
    """The DIMSE service accepted an association."""

    source_ae_title: str
    address: str
    tls: bool


@dataclasses.dataclass(frozen=True)
class AssociationRejected:
    """The DIMSE service rejected an association request with A-ASSOCIATE-RJ.

    ``reason`` is the rejection reason in the words of PS3.8 Table 9-21,
    such as "calling-AE-title-not-recognized" or "local-limit-exceeded".
    """

    source_ae_title: str
    address: str
    reason: str


@dataclasses.dataclass(frozen=True)
class AssociationEnded:
    """An accepted association ended: released by either side, or aborted.

    ``duration`` is the seconds from its acceptance to its end.
    """

    source_ae_title: str
    aborted: bool
    duration: float


@dataclasses.dataclass(frozen=True)
class FilesIndexed:
    """An indexing task or watched folder finished a chunk of files."""

    task_id: int
    indexed: int
    failed: int
    ignored: int


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
