"""The Prometheus metrics of one server process, on a registry of their own.

Each :class:`ArchiveMetrics` has its own ``CollectorRegistry``, never
prometheus_client's global one, so that tests and several applications in one
process do not share counts. Counters and histograms are fed by events
(:mod:`dicomvault.metrics.subscribers`) and by the HTTP middleware
(:mod:`dicomvault.metrics.http`). Gauges of queue depths and open
associations call back into their owners when Prometheus scrapes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from dicomvault import __version__

LOGGER = logging.getLogger(__name__)

# Bucket upper bounds in seconds. Stores and queries take milliseconds to
# seconds, and retrieves and associations take seconds to an hour.
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)


class ArchiveMetrics:
    """The metric families of dicomvault, registered on :attr:`registry`.

    Parameters
    ----------
    process_collectors : bool
        Also register prometheus_client's process, platform and garbage
        collector metrics (``process_*``, ``python_*``). They describe the
        whole process, so only the server's own instance needs them.
    """

    def __init__(self, process_collectors: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        if process_collectors:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)

        Gauge(
            "dicomvault_build_info",
            "The dicomvault version, as a label of a gauge that is always 1.",
            ["version"],
            registry=registry,
        ).labels(__version__).set(1)
        self.draining = Gauge(
            "dicomvault_draining",
            "1 from a stop signal until the process exits, else 0.",
            registry=registry,
        )

        # DIMSE associations.
        self.associations_accepted = Counter(
            "dicomvault_dimse_associations_accepted",
            "Associations the DIMSE service accepted.",
            registry=registry,
        )
        self.associations_rejected = Counter(
            "dicomvault_dimse_associations_rejected",
            "Association requests rejected with A-ASSOCIATE-RJ, by reason of PS3.8 Table 9-21.",
            ["reason"],
            registry=registry,
        )
        self.associations_ended = Counter(
            "dicomvault_dimse_associations_ended",
            "Accepted associations that ended, by outcome: released or aborted.",
            ["outcome"],
            registry=registry,
        )
        self.association_duration = Histogram(
            "dicomvault_dimse_association_duration_seconds",
            "Time from the acceptance of an association to its release or abort.",
            buckets=SLOW_BUCKETS,
            registry=registry,
        )
        self.associations_open = Gauge(
            "dicomvault_dimse_associations_open",
            "Established associations, also those finishing during a drain.",
            registry=registry,
        )

        # Stores (C-STORE and STOW-RS).
        self.instances_stored = Counter(
            "dicomvault_instances_stored",
            "Instances stored and indexed, replacements included, by service.",
            ["service"],
            registry=registry,
        )
        self.stored_bytes = Counter(
            "dicomvault_stored_bytes",
            "Bytes of stored instances, file meta included, by service.",
            ["service"],
            registry=registry,
        )
        self.store_duration = Histogram(
            "dicomvault_store_duration_seconds",
            "Time the archive took to parse, write and index one instance, without the "
            "network transfer, by service.",
            ["service"],
            buckets=FAST_BUCKETS,
            registry=registry,
        )
        self.store_failures = Counter(
            "dicomvault_store_failures",
            "Store requests that failed and kept nothing, by service and reason.",
            ["service", "reason"],
            registry=registry,
        )

        # Queries (C-FIND, QIDO-RS, console searches).
        self.queries = Counter(
            "dicomvault_queries",
            "Queries that ran, by service and query level.",
            ["service", "level"],
            registry=registry,
        )
        self.query_failures = Counter(
            "dicomvault_query_failures",
            "Queries that the index database failed, by service.",
            ["service"],
            registry=registry,
        )
        self.query_matches = Counter(
            "dicomvault_query_matches",
            "Matches that queries returned, by service.",
            ["service"],
            registry=registry,
        )
        self.query_duration = Histogram(
            "dicomvault_query_duration_seconds",
            "Time from a query request to its last match, by service.",
            ["service"],
            buckets=FAST_BUCKETS,
            registry=registry,
        )

        # Retrieves (C-MOVE and C-GET).
        self.retrieves = Counter(
            "dicomvault_retrieves",
            "C-MOVE and C-GET requests that finished, by operation and outcome "
            "(success, warning, failure, cancelled, refused).",
            ["operation", "outcome"],
            registry=registry,
        )
        self.retrieve_sub_operations = Counter(
            "dicomvault_retrieve_sub_operations",
            "C-STORE sub-operations of C-MOVE and C-GET, by operation and result "
            "(completed, failed, warning).",
            ["operation", "result"],
            registry=registry,
        )
        self.retrieved_bytes = Counter(
            "dicomvault_retrieved_bytes",
            "Stored bytes of the instances that C-MOVE and C-GET sent, by operation.",
            ["operation"],
            registry=registry,
        )
        self.retrieve_duration = Histogram(
            "dicomvault_retrieve_duration_seconds",
            "Time from a C-MOVE or C-GET request to its final response, by operation.",
            ["operation"],
            buckets=SLOW_BUCKETS,
            registry=registry,
        )

        # HTTP.
        self.http_requests = Counter(
            "dicomvault_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "dicomvault_http_request_duration_seconds",
            "Time from an HTTP request to the end of its response, by method and route template.",
            ["method", "route"],
            buckets=FAST_BUCKETS,
            registry=registry,
        )
        self.http_response_bytes = Counter(
            "dicomvault_http_response_bytes",
            "Bytes of HTTP response bodies, by method and route template.",
            ["method", "route"],
            registry=registry,
        )
        self.http_in_progress = Gauge(
            "dicomvault_http_requests_in_progress",
            "HTTP requests being answered.",
            registry=registry,
        )

        # Indexing and the audit trail.
        self.files_indexed = Counter(
            "dicomvault_ingest_files",
            "Files that indexing tasks and watched folders read, by outcome "
            "(indexed, failed, ignored).",
            ["outcome"],
            registry=registry,
        )
        self.ingest_tasks_queued = Gauge(
            "dicomvault_ingest_tasks_queued",
            "Indexing tasks waiting to run in this process.",
            registry=registry,
        )
        self.audit_events_queued = Gauge(
            "dicomvault_audit_events_queued",
            "Audit events waiting to be written to the index database.",
            registry=registry,
        )

        # Errors and warnings of every logger.
        self.log_messages = Counter(
            "dicomvault_log_messages",
            "Log records at WARNING and above, of every logger in the process, by level.",
            ["level"],
            registry=registry,
        )

    def watch_open_associations(self, count: Callable[[], int]) -> None:
        """Read the number of open associations from ``count`` at each scrape."""
        self.associations_open.set_function(count)

    def watch_ingest_queue(self, count: Callable[[], int]) -> None:
        """Read the number of queued indexing tasks from ``count`` at each scrape."""
        self.ingest_tasks_queued.set_function(count)

    def watch_audit_queue(self, count: Callable[[], int]) -> None:
        """Read the number of queued audit events from ``count`` at each scrape."""
        self.audit_events_queued.set_function(count)

    def watch_draining(self, draining: Callable[[], bool]) -> None:
        """Read whether the process is draining from ``draining`` at each scrape."""
        self.draining.set_function(lambda: 1.0 if draining() else 0.0)
