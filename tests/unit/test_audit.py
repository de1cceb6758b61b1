"""AuditTrail: what it records for each event, its batches, its filters and its log lines."""

from __future__ import annotations

import datetime
import json
import logging

import pytest
from sqlalchemy import Engine

from dicomvault.audit import (
    ActorKind,
    AuditAction,
    AuditEvent,
    AuditEventType,
    AuditFilter,
    AuditOutcome,
    AuditTrail,
)
from dicomvault.events import EventBus, InstanceRejected, InstanceStored, QueryPerformed
from dicomvault.index.database import create_index_engine

STUDY_A = "1.2.826.0.1.3680043.8.498.1"
STUDY_B = "1.2.826.0.1.3680043.8.498.2"


def stored(study: str, source: str = "MODALITY", size: int = 100) -> InstanceStored:
    return InstanceStored(
        sop_instance_uid=f"{study}.{size}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        study_instance_uid=study,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size=size,
        source_ae_title=source,
        replaced=False,
    )


def login(actor: str, outcome: AuditOutcome, when: datetime.datetime | None = None) -> AuditEvent:
    event = AuditEvent(
        AuditEventType.USER_AUTHENTICATION,
        AuditAction.EXECUTE,
        outcome,
        actor=actor,
        actor_kind=ActorKind.USER,
        description="Logged in",
        source="127.0.0.1",
    )
    if when is not None:
        event = AuditEvent(**{**vars(event), "occurred_at": when})
    return event


@pytest.fixture
def trail(migrated_engine: Engine) -> AuditTrail:
    return AuditTrail(migrated_engine)


def test_record_reads_back(trail: AuditTrail) -> None:
    trail.record(login("alice", AuditOutcome.SUCCESS))

    [event] = trail.read(AuditFilter())
    assert event.event_code == "110114"
    assert event.event_name == "User Authentication"
    assert event.action == "E"
    assert event.outcome == 0
    assert event.actor == "alice"
    assert event.actor_kind == "user"
    assert event.source == "127.0.0.1"
    assert event.occurred_at.tzinfo is not None


def test_stores_become_one_event_per_study(trail: AuditTrail) -> None:
    bus = EventBus()
    trail.subscribe(bus)
    trail.start()
    for size in (10, 20, 30):
        bus.publish(stored(STUDY_A, size=size))
    bus.publish(stored(STUDY_B))
    trail.stop()

    events = {event.study_uids: event for event in trail.read(AuditFilter())}
    assert set(events) == {(STUDY_A,), (STUDY_B,)}
    assert events[(STUDY_A,)].detail == {"instances": 3, "bytes": 60, "replaced": 0}
    assert events[(STUDY_A,)].description == "Stored 3 instances"
    assert events[(STUDY_A,)].actor == "MODALITY"
    assert events[(STUDY_A,)].action == "C"


def test_rejection_and_query_mapped(trail: AuditTrail) -> None:
    bus = EventBus()
    trail.subscribe(bus)
    trail.start()
    bus.publish(InstanceRejected("1.2.3", "MODALITY", "duplicate"))
    bus.publish(QueryPerformed("STUDY", ("PatientID",), 2, "FINDSCU", "10.0.0.5"))
    bus.publish(QueryPerformed("SERIES", ("Modality",), 0, "", "127.0.0.1", "alice"))
    trail.stop()

    events = {event.actor: event for event in trail.read(AuditFilter())}
    assert events["MODALITY"].outcome == 4
    assert events["MODALITY"].description == "Store of 1.2.3 rejected: duplicate"
    assert events["FINDSCU"].event_code == "110112"
    assert events["FINDSCU"].actor_kind == "node"
    assert events["FINDSCU"].source == "10.0.0.5"
    assert events["alice"].actor_kind == "user"
    assert events["alice"].detail["keys"] == ["Modality"]


def test_filters(trail: AuditTrail) -> None:
    early = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    late = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
    trail.record(login("alice", AuditOutcome.SUCCESS, early))
    trail.record(login("bob", AuditOutcome.MINOR_FAILURE, late))
    bus = EventBus()
    trail.subscribe(bus)
    trail.start()
    bus.publish(stored(STUDY_A))
    trail.stop()

    def actors(selection: AuditFilter) -> list[str]:
        return [event.actor for event in trail.read(selection)]

    assert actors(AuditFilter()) == ["MODALITY", "bob", "alice"]
    assert actors(AuditFilter(actor="bob")) == ["bob"]
    assert actors(AuditFilter(failures_only=True)) == ["bob"]
    assert actors(AuditFilter(since=late)) == ["MODALITY", "bob"]
    assert actors(AuditFilter(until=late)) == ["alice"]
    assert actors(AuditFilter(event_code="110104")) == ["MODALITY"]
    assert actors(AuditFilter(study_uid=STUDY_A)) == ["MODALITY"]
    assert actors(AuditFilter(study_uid=STUDY_A[:-1])) == []
    assert [e.actor for e in trail.read(AuditFilter(), limit=1, offset=1)] == ["bob"]


def test_log_line_is_json(trail: AuditTrail, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="dicomvault.audit.events"):
        trail.record(login("alice", AuditOutcome.SUCCESS))

    [record] = [r for r in caplog.records if r.name == "dicomvault.audit.events"]
    line = json.loads(record.getMessage())
    assert line["event_code"] == "110114"
    assert line["actor"] == "alice"
    assert line["outcome"] == 0


def test_database_failure_logged(caplog: pytest.LogCaptureFixture) -> None:
    # An index without tables: the insert fails, and the failure is logged.
    engine = create_index_engine("sqlite://")
    trail = AuditTrail(engine)
    with caplog.at_level(logging.ERROR, logger="dicomvault.audit"):
        trail.record(login("alice", AuditOutcome.SUCCESS))

    assert "Cannot write 1 audit events" in caplog.text
