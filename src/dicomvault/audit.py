"""The audit trail: security-relevant events, kept in the index and logged as structured lines.

Events follow the audit message model of DICOM PS3.15 Annex A.5. Each has
an event type (a DCM code such as 110112 Query), an action code (Create,
Read, Update, Delete, Execute) and an outcome (0 success, 4 minor failure, 8
serious failure, 12 major failure). It names the active participant (a user
name or a calling AE title, with its network address) and the participant
objects (Study Instance UIDs). dicomvault does not send RFC 3881 XML to a syslog server;
each event is a row of the ``audit_events`` table and one JSON line of the
``dicomvault.audit.events`` logger.

:class:`AuditTrail` subscribes to the archive's :class:`~dicomvault.events.EventBus`
and writes in batches on a thread of its own, so that a C-STORE does not
wait for an extra transaction. Stores of one study from one source within a
flush interval become one "DICOM Instances Transferred" event with a count.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import enum
import json
import logging
import queue
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Engine, insert, literal, select
from sqlalchemy.exc import SQLAlchemyError

from dicomvault.events import EventBus, InstanceRejected, InstanceStored, QueryPerformed
from dicomvault.index.schema import audit_events

LOGGER = logging.getLogger(__name__)
# Audit lines go to their own logger, so that a site can route them to a file
# or a log collector apart from the operational log.
AUDIT_LOGGER = logging.getLogger("dicomvault.audit.events")

FLUSH_INTERVAL_SECONDS = 1.0
MAX_QUEUED_EVENTS = 100_000  # beyond this, events are dropped with an error line


class AuditEventType(enum.Enum):
    """Audit event types of DICOM PS3.15 A.5.3 / PS3.16 CID 400, by DCM code."""

    APPLICATION_ACTIVITY = ("110100", "Application Activity")
    BEGIN_TRANSFERRING = ("110102", "Begin Transferring DICOM Instances")
    INSTANCES_ACCESSED = ("110103", "DICOM Instances Accessed")
    INSTANCES_TRANSFERRED = ("110104", "DICOM Instances Transferred")
    EXPORT = ("110106", "Export")
    QUERY = ("110112", "Query")
    SECURITY_ALERT = ("110113", "Security Alert")
    USER_AUTHENTICATION = ("110114", "User Authentication")

    @property
    def code(self) -> str:
        """The DCM code value, such as "110112"."""
        return self.value[0]

    @property
    def meaning(self) -> str:
        """The code meaning, such as "Query"."""
        return self.value[1]


class AuditAction(enum.StrEnum):
    """EventActionCode of PS3.15 A.5.1: what the actor did to the objects."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class AuditOutcome(enum.IntEnum):
    """EventOutcomeIndicator of PS3.15 A.5.1."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


class ActorKind(enum.StrEnum):
    """Kind of actor: a console or API user, a DICOM node, or the archive itself."""

    USER = "user"
    NODE = "node"
    SYSTEM = "system"


@dataclasses.dataclass(frozen=True)
class AuditEvent:
    """One audit event, published on the event bus or recorded directly.

    ``actor`` is a user name, a calling AE title, or a name for the archive
    itself ("dicomvault", "cli:USER"). ``source`` is the network address of
    the actor, empty when local. ``description`` is one sentence for people;
    ``detail`` contains the rest as JSON-compatible values (never secrets).
    """

    event_type: AuditEventType
    action: AuditAction
    outcome: AuditOutcome
    actor: str
    actor_kind: ActorKind
    description: str
    source: str = ""
    study_uids: tuple[str, ...] = ()
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    occurred_at: datetime.datetime = dataclasses.field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC)
    )


@dataclasses.dataclass(frozen=True)
class AuditFilter:
    """Selection of recorded events to read; empty fields select everything."""

    since: datetime.datetime | None = None
    until: datetime.datetime | None = None
    actor: str = ""
    event_code: str = ""
    study_uid: str = ""
    failures_only: bool = False


@dataclasses.dataclass(frozen=True)
class RecordedEvent:
    """An audit event as read back from the index."""

    id: int
    occurred_at: datetime.datetime
    event_code: str
    event_name: str
    action: str
    outcome: int
    actor: str
    actor_kind: str
    source: str
    study_uids: tuple[str, ...]
    description: str
    detail: dict[str, Any]


# A queued item: an audit event, or a stored instance with the time it was stored.
_Queued = AuditEvent | tuple[datetime.datetime, InstanceStored]


class AuditTrail:
    """Writes audit events to the index and to the ``dicomvault.audit.events`` logger.

    :meth:`record` writes at once, for short-lived processes such as the
    command line. :meth:`subscribe` plus :meth:`start` queue the events of a
    server and write them every ``FLUSH_INTERVAL_SECONDS``; :meth:`stop`
    writes what is queued.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: queue.SimpleQueue[_Queued | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._queued = 0
        self._lock = threading.Lock()

    # --- receiving events ---------------------------------------------------------------

    def subscribe(self, bus: EventBus) -> None:
        """Receive audit events and the store and query events of ``bus``."""
        bus.subscribe(AuditEvent, self._enqueue)
        bus.subscribe(InstanceStored, self._enqueue)
        bus.subscribe(InstanceRejected, lambda event: self._enqueue(_rejected(event)))
        bus.subscribe(QueryPerformed, lambda event: self._enqueue(_queried(event)))

    def record(self, event: AuditEvent) -> None:
        """Write one event now; a database failure is logged, not raised."""
        self._write([event])

    def read(
        self, selection: AuditFilter, limit: int = 100, offset: int = 0
    ) -> list[RecordedEvent]:
        """Return recorded events, newest first.

        Raises
        ------
        sqlalchemy.exc.SQLAlchemyError
            If the index database fails.
        """
        table = audit_events
        statement = select(table)
        if selection.since is not None:
            statement = statement.where(table.c.occurred_at >= selection.since)
        if selection.until is not None:
            statement = statement.where(table.c.occurred_at < selection.until)
        if selection.actor:
            statement = statement.where(table.c.actor == selection.actor)
        if selection.event_code:
            statement = statement.where(table.c.event_code == selection.event_code)
        if selection.study_uid:
            # Backslash-separated list: match the UID as a whole item.
            padded = literal("\\") + table.c.study_uids + literal("\\")
            item = f"\\{selection.study_uid}\\"
            statement = statement.where(padded.contains(item, autoescape=True))
        if selection.failures_only:
            statement = statement.where(table.c.outcome > 0)
        statement = statement.order_by(table.c.pk.desc()).limit(limit).offset(offset)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [_recorded(row) for row in rows]

    def _enqueue(self, event: AuditEvent | InstanceStored) -> None:
        if isinstance(event, InstanceStored):
            # Stores are grouped when written; the group keeps the first one's time.
            item: _Queued = (datetime.datetime.now(datetime.UTC), event)
        else:
            item = event
        with self._lock:
            if self._queued >= MAX_QUEUED_EVENTS:
                LOGGER.error(
                    "Audit queue full (%d events): dropped an event; is the index database down?",
                    MAX_QUEUED_EVENTS,
                )
                return
            self._queued += 1
        self._queue.put(item)

    @property
    def queued(self) -> int:
        """The number of events waiting for the writer thread."""
        with self._lock:
            return self._queued

    # --- the writer thread -----------------------------------------------------------------

    def start(self) -> None:
        """Start the thread that writes queued events."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write the queued events and stop the writer thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[_Queued] = []
            try:
                item = self._queue.get(timeout=FLUSH_INTERVAL_SECONDS)
            except queue.Empty:
                continue
            deadline = datetime.datetime.now(datetime.UTC) + datetime.timedelta(
                seconds=FLUSH_INTERVAL_SECONDS
            )
            while True:
                if item is None:
                    stopping = True
                    break
                batch.append(item)
                remaining = (deadline - datetime.datetime.now(datetime.UTC)).total_seconds()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            with self._lock:
                self._queued -= len(batch)
            self._write(_aggregate(batch))

    def _write(self, events: list[AuditEvent]) -> None:
        if not events:
            return
        for event in events:
            AUDIT_LOGGER.info(_log_line(event))
        rows = [_row(event) for event in events]
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(audit_events), rows)
        except SQLAlchemyError as exc:
            LOGGER.error("Cannot write %d audit events to the index: %s", len(rows), exc)


def _aggregate(items: Iterable[_Queued]) -> list[AuditEvent]:
    """Turn stored instances into one transfer event per source and study, in order."""
    events: list[AuditEvent] = []
    stored: dict[tuple[str, str], list[InstanceStored]] = collections.OrderedDict()
    first_stored: dict[tuple[str, str], datetime.datetime] = {}
    for item in items:
        if isinstance(item, AuditEvent):
            events.append(item)
            continue
        when, instance = item
        group = (instance.source_ae_title, instance.study_instance_uid)
        stored.setdefault(group, []).append(instance)
        first_stored.setdefault(group, when)
    for (source, study), instances in stored.items():
        count = len(instances)
        events.append(
            AuditEvent(
                AuditEventType.INSTANCES_TRANSFERRED,
                AuditAction.CREATE,
                AuditOutcome.SUCCESS,
                actor=source or "unknown",
                actor_kind=ActorKind.NODE,
                description=f"Stored {count} instance{'s' if count != 1 else ''}",
                study_uids=(study,),
                detail={
                    "instances": count,
                    "bytes": sum(item.size for item in instances),
                    "replaced": sum(1 for item in instances if item.replaced),
                },
                occurred_at=first_stored[(source, study)],
            )
        )
    return sorted(events, key=lambda event: event.occurred_at)


def _rejected(event: InstanceRejected) -> AuditEvent:
    return AuditEvent(
        AuditEventType.INSTANCES_TRANSFERRED,
        AuditAction.CREATE,
        AuditOutcome.MINOR_FAILURE,
        actor=event.source_ae_title or "unknown",
        actor_kind=ActorKind.NODE,
        description=f"Store of {event.sop_instance_uid} rejected: {event.reason}",
        detail={"sop_instance_uid": event.sop_instance_uid},
    )


def _queried(event: QueryPerformed) -> AuditEvent:
    return AuditEvent(
        AuditEventType.QUERY,
        AuditAction.EXECUTE,
        AuditOutcome.SUCCESS,
        actor=event.user or event.source_ae_title or "unknown",
        actor_kind=ActorKind.USER if event.user else ActorKind.NODE,
        description=f"{event.level} query, {event.matches} matches",
        source=event.address,
        detail={"level": event.level, "keys": list(event.keys), "matches": event.matches},
    )


def _row(event: AuditEvent) -> dict[str, Any]:
    return {
        "occurred_at": event.occurred_at,
        "event_code": event.event_type.code,
        "event_name": event.event_type.meaning,
        "action": str(event.action),
        "outcome": int(event.outcome),
        "actor": event.actor,
        "actor_kind": str(event.actor_kind),
        "source": event.source,
        "study_uids": "\\".join(event.study_uids),
        "description": event.description,
        "detail": json.dumps(dict(event.detail), sort_keys=True, default=str),
    }


def _recorded(row: Any) -> RecordedEvent:
    occurred_at = row.occurred_at
    if occurred_at.tzinfo is None:  # SQLite returns naive UTC datetimes
        occurred_at = occurred_at.replace(tzinfo=datetime.UTC)
    return RecordedEvent(
        id=row.pk,
        occurred_at=occurred_at,
        event_code=row.event_code,
        event_name=row.event_name,
        action=row.action,
        outcome=row.outcome,
        actor=row.actor,
        actor_kind=row.actor_kind,
        source=row.source,
        study_uids=tuple(uid for uid in row.study_uids.split("\\") if uid),
        description=row.description,
        detail=json.loads(row.detail or "{}"),
    )


def _log_line(event: AuditEvent) -> str:
    """Return the event as one JSON object, the form log collectors parse."""
    row = _row(event)
    row["occurred_at"] = event.occurred_at.isoformat()
    row["detail"] = dict(event.detail)
    return json.dumps(row, sort_keys=True, default=str)
