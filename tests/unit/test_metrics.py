"""Metrics fed by events and log records, on registries of their own."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest

from dicomvault.dimse.status import Status
from dicomvault.events import (
    AssociationAccepted,
    AssociationEnded,
    AssociationRejected,
    EventBus,
    FilesIndexed,
    InstanceRejected,
    InstanceStored,
    QueryPerformed,
    RetrievePerformed,
)
from dicomvault.metrics import ArchiveMetrics, LogCounter, subscribe_metrics
from dicomvault.metrics.http import route_template
from dicomvault.metrics.subscribers import retrieve_outcome


def stored(service: str = "C-STORE", size: int = 1000, duration: float = 0.02) -> InstanceStored:
    return InstanceStored(
        sop_instance_uid="1.2.3.4",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
        study_instance_uid="1.2.3",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size=size,
        source_ae_title="SCU",
        replaced=False,
        service=service,
        duration=duration,
    )


@pytest.fixture
def metrics() -> ArchiveMetrics:
    return ArchiveMetrics(process_collectors=False)


@pytest.fixture
def bus(metrics: ArchiveMetrics) -> EventBus:
    events = EventBus()
    subscribe_metrics(metrics, events)
    return events


def sample(metrics: ArchiveMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


class TestStores:
    def test_stored_counted(self, metrics: ArchiveMetrics, bus: EventBus) -> None:
        bus.publish(stored(size=1000, duration=0.02))
        bus.publish(stored(size=500, duration=0.2))

        assert sample(metrics, "dicomvault_instances_stored_total", service="C-STORE") == 2
        assert sample(metrics, "dicomvault_stored_bytes_total", service="C-STORE") == 1500
        count = "dicomvault_store_duration_seconds_count"
        assert sample(metrics, count, service="C-STORE") == 2
        bucket = "dicomvault_store_duration_seconds_bucket"
        assert sample(metrics, bucket, service="C-STORE", le="0.025") == 1
        assert sample(metrics, bucket, service="C-STORE", le="0.25") == 2

    def test_services_apart(self, metrics: ArchiveMetrics, bus: EventBus) -> None:
        bus.publish(stored(service="C-STORE"))
        bus.publish(stored(service="STOW-RS"))
        bus.publish(stored(service=""))

        for service in ("C-STORE", "STOW-RS", "other"):
            assert sample(metrics, "dicomvault_instances_stored_total", service=service) == 1

    def test_rejected_by_reason(self, metrics: ArchiveMetrics, bus: EventBus) -> None:
        bus.publish(InstanceRejected("1.2", "SCU", "duplicate", "duplicate", "C-STORE"))
        bus.publish(InstanceRejected("1.3", "", "no space", "storage_full", "STOW-RS"))

        name = "dicomvault_store_failures_total"
        assert sample(metrics, name, service="C-STORE", reason="duplicate") == 1
        assert sample(metrics, name, service="STOW-RS", reason="storage_full") == 1


class TestQueries:
    def test_query_counted(self, metrics: ArchiveMetrics, bus: EventBus) -> None:
        bus.publish(QueryPerformed("STUDY", ("PatientName",), 7, "SCU", service="C-FIND"))
        bus.publish(QueryPerformed("SERIES", (), 3, "", user="alice", service="QIDO-RS"))

        assert sample(metrics, "dicomvault_queries_total", service="C-FIND", level="STUDY") == 1
        assert sample(metrics, "dicomvault_queries_total", service="QIDO-RS", level="SERIES") == 1
        assert sample(metrics, "dicomvault_query_matches_total", service="C-FIND") == 7
        assert sample(metrics, "dicomvault_query_duration_seconds_count", service="C-FIND") == 1
        assert sample(metrics, "dicomvault_query_failures_total", service="C-FIND") is None

    def test_failure_counted(self, metrics: ArchiveMetrics, bus: EventBus) -> None:
        bus.publish(QueryPerformed("STUDY", (), 0, "SCU", service="C-FIND", failed=True))

        assert sample(metrics, "dicomvault_query_failures_total", service="C-FIND") == 1


class TestRetrieves:
    def test_sub_operations_counted(self, metrics: ArchiveMetrics, bus: EventBus) -> None:
        bus.publish(
            RetrievePerformed("C-MOVE", "SCU", Status.SUB_OPERATIONS_WARNING, 5, 1, 2, 7000, 1.5)
        )

        name = "dicomvault_retrieve_sub_operations_total"
        assert sample(metrics, name, operation="C-MOVE", result="completed") == 5
        assert sample(metrics, name, operation="C-MOVE", result="failed") == 1
        assert sample(metrics, name, operation="C-MOVE", result="warning") == 2
        assert sample(metrics, "dicomvault_retrieved_bytes_total", operation="C-MOVE") == 7000
        assert (
            sample(metrics, "dicomvault_retrieves_total", operation="C-MOVE", outcome="warning")
            == 1
        )

    @pytest.mark.parametrize(
        ("status", "outcome"),
        [
            pytest.param(Status.SUCCESS, "success", id="success"),
            pytest.param(Status.SUB_OPERATIONS_WARNING, "warning", id="warning"),
            pytest.param(Status.CANCEL, "cancelled", id="cancel"),
            pytest.param(Status.NOT_AUTHORIZED, "refused", id="not-authorized"),
            pytest.param(Status.MOVE_DESTINATION_UNKNOWN, "failure", id="unknown-destination"),
            pytest.param(None, "failure", id="no-final-response"),
        ],
    )
    def test_outcome(self, status: int | None, outcome: str) -> None:
        assert retrieve_outcome(status) == outcome


class TestAssociations:
    def test_lifecycle_counted(self, metrics: ArchiveMetrics, bus: EventBus) -> None:
        bus.publish(AssociationAccepted("SCU", "127.0.0.1", tls=False))
        bus.publish(AssociationAccepted("SCU", "127.0.0.1", tls=True))
        bus.publish(AssociationEnded("SCU", aborted=False, duration=0.3))
        bus.publish(AssociationEnded("SCU", aborted=True, duration=40.0))
        bus.publish(AssociationRejected("BAD", "127.0.0.1", "calling-AE-title-not-recognized"))

        assert sample(metrics, "dicomvault_dimse_associations_accepted_total") == 2
        ended = "dicomvault_dimse_associations_ended_total"
        assert sample(metrics, ended, outcome="released") == 1
        assert sample(metrics, ended, outcome="aborted") == 1
        rejected = "dicomvault_dimse_associations_rejected_total"
        assert sample(metrics, rejected, reason="calling-AE-title-not-recognized") == 1
        assert sample(metrics, "dicomvault_dimse_association_duration_seconds_count") == 2

    def test_open_read_at_scrape(self, metrics: ArchiveMetrics) -> None:
        open_now = [3]
        metrics.watch_open_associations(lambda: open_now[0])
        assert sample(metrics, "dicomvault_dimse_associations_open") == 3

        open_now[0] = 1

        assert sample(metrics, "dicomvault_dimse_associations_open") == 1


class TestQueues:
    def test_files_indexed(self, metrics: ArchiveMetrics, bus: EventBus) -> None:
        bus.publish(FilesIndexed(1, indexed=40, failed=2, ignored=1))
        bus.publish(FilesIndexed(1, indexed=10, failed=0, ignored=0))

        name = "dicomvault_ingest_files_total"
        assert sample(metrics, name, outcome="indexed") == 50
        assert sample(metrics, name, outcome="failed") == 2
        assert sample(metrics, name, outcome="ignored") == 1

    def test_gauges_read_at_scrape(self, metrics: ArchiveMetrics) -> None:
        metrics.watch_ingest_queue(lambda: 2)
        metrics.watch_audit_queue(lambda: 17)
        metrics.watch_draining(lambda: True)

        assert sample(metrics, "dicomvault_ingest_tasks_queued") == 2
        assert sample(metrics, "dicomvault_audit_events_queued") == 17
        assert sample(metrics, "dicomvault_draining") == 1


class TestLogCounter:
    @pytest.fixture
    def counted_logger(self, metrics: ArchiveMetrics) -> Iterator[logging.Logger]:
        logger = logging.getLogger("tests.metrics.counted")
        handler = LogCounter(metrics.log_messages)
        logger.addHandler(handler)
        yield logger
        logger.removeHandler(handler)

    def test_warnings_and_errors_counted(
        self, metrics: ArchiveMetrics, counted_logger: logging.Logger
    ) -> None:
        counted_logger.info("not counted")
        counted_logger.warning("one warning")
        counted_logger.error("one error")
        counted_logger.error("another error")

        assert sample(metrics, "dicomvault_log_messages_total", level="WARNING") == 1
        assert sample(metrics, "dicomvault_log_messages_total", level="ERROR") == 2
        assert sample(metrics, "dicomvault_log_messages_total", level="CRITICAL") == 0
        assert sample(metrics, "dicomvault_log_messages_total", level="INFO") is None


class TestRegistry:
    def test_registries_apart(self, metrics: ArchiveMetrics, bus: EventBus) -> None:
        other = ArchiveMetrics(process_collectors=False)

        bus.publish(stored())

        assert sample(metrics, "dicomvault_instances_stored_total", service="C-STORE") == 1
        assert sample(other, "dicomvault_instances_stored_total", service="C-STORE") is None

    def test_exposition_names(self) -> None:
        text = generate_latest(ArchiveMetrics().registry).decode()

        sampled = {
            line.split("{")[0].split(" ")[0]
            for line in text.splitlines()
            if line and not line.startswith("#")
        }
        for name in (
            "dicomvault_build_info",
            "dicomvault_http_requests_in_progress",
            "process_cpu_seconds_total",
            "python_gc_collections_total",
        ):
            assert name in sampled


MATCHED = object()  # a placeholder for the route object that the router puts in the scope


class TestRouteTemplate:
    @pytest.mark.parametrize(
        ("path", "params", "template"),
        [
            pytest.param("/dicomweb/studies", {}, "/dicomweb/studies", id="no-parameters"),
            pytest.param(
                "/dicomweb/studies/1.2.3/series/1.2.3.4/instances/9",
                {"study": "1.2.3", "series": "1.2.3.4", "instance": "9"},
                "/dicomweb/studies/{study}/series/{series}/instances/{instance}",
                id="dicomweb-instance",
            ),
            pytest.param(
                "/dicomweb/studies/1.2/series/1.2",
                {"study": "1.2", "series": "1.2"},
                "/dicomweb/studies/{study}/series/{series}",
                id="equal-values",
            ),
            pytest.param("/api/tasks/5", {"task_id": 5}, "/api/tasks/{task_id}", id="integer"),
            pytest.param(
                "/console/static/vendor/htmx.min.js",
                {"path": "vendor/htmx.min.js"},
                "/console/static/{path}",
                id="mounted-file",
            ),
            pytest.param("/a/x/b/xx", {"p": "x"}, "/a/{p}/b/xx", id="value-prefix-of-literal"),
        ],
    )
    def test_matched(self, path: str, params: dict[str, object], template: str) -> None:
        scope = {"type": "http", "route": MATCHED, "path": path, "path_params": params}

        assert route_template(scope) == template

    def test_unmatched(self) -> None:
        scope = {"type": "http", "path": "/no/such/page", "path_params": {}}

        assert route_template(scope) == "unmatched"
