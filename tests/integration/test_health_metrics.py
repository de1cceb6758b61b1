"""`dicomvault serve`: /ready, /metrics after real DIMSE traffic, and the drain on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
)

from tests.support.corpus import PYDICOM_TEST_FILES, stored_file_for
from tests.support.dcmtk import echoscu, findscu, storescu
from tests.support.network import LOOPBACK, port_accepts_connections, wait_until
from tests.support.server import DicomvaultServer, ServerFactory

pytestmark = pytest.mark.integration

TIMEOUT_SECONDS = 30
# Metrics open to anyone on loopback, and calling AE titles limited so that a
# rejection can be provoked.
METRICS_CONFIG = """
[http]
metrics_access = "open"

[dimse]
allowed_calling_ae_titles = ["STORESCU", "FINDSCU", "GETSCU", "HOLDSCU"]
"""
CT_FILE = PYDICOM_TEST_FILES / "CT_small.dcm"
MR_FILE = PYDICOM_TEST_FILES / "MR_small.dcm"


@pytest.fixture(scope="module")
def index_backend() -> str:
    """The metrics and the drain do not depend on the index back-end; test_store and
    test_find run whole servers on PostgreSQL.
    """
    return "sqlite"


@pytest.fixture(scope="module")
def archive(start_module_server: ServerFactory) -> DicomvaultServer:
    return start_module_server(config=METRICS_CONFIG)


@pytest.fixture
def http(archive: DicomvaultServer) -> Iterator[httpx.Client]:
    base_url = f"http://{LOOPBACK}:{archive.http_port}"
    with httpx.Client(base_url=base_url, timeout=TIMEOUT_SECONDS) as client:
        yield client


class Scrape:
    """The samples of one /metrics response, by metric name and labels."""

    def __init__(self, client: httpx.Client) -> None:
        response = client.get("/metrics")
        assert response.status_code == 200, response.text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                self.samples[key] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """Return the sample's value; 0 for a labelled sample not reported yet."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)


def hold_association(server: DicomvaultServer) -> Any:
    """Open an association for CT Image Storage and return it, established."""
    ae = AE(ae_title="HOLDSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_SECONDS
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(LOOPBACK, server.port, ae_title=server.ae_title)
    assert assoc.is_established, server.describe()
    return assoc


def send_signal(server: DicomvaultServer, signum: int) -> None:
    assert server.process is not None
    server.process.send_signal(signum)


def wait_for_exit(server: DicomvaultServer, timeout: float) -> int:
    """Wait for the process to exit by itself; fail with its log if it does not."""
    assert server.process is not None
    try:
        return server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {timeout:.0f} s after SIGTERM\n{server.describe()}")


class TestReady:
    def test_ready(self, http: httpx.Client) -> None:
        response = http.get("/ready")

        assert response.status_code == 200
        assert response.json() == {"status": "ready", "checks": {"database": "ok", "storage": "ok"}}

    def test_health(self, http: httpx.Client) -> None:
        response = http.get("/health")

        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


class TestMetrics:
    def test_stores_counted(self, archive: DicomvaultServer, http: httpx.Client) -> None:
        before = Scrape(http)

        run = storescu(archive.port, [CT_FILE, MR_FILE], archive.ae_title)

        assert all(result.status == 0 for result in run.results.values()), run.run.describe()
        after = Scrape(http)
        stored_size = sum(
            path.stat().st_size
            for file in (CT_FILE, MR_FILE)
            for path in stored_file_for(archive.data_dir, pydicom.dcmread(file).SOPInstanceUID)
        )
        name = "dicomvault_instances_stored_total"
        assert after.value(name, service="C-STORE") - before.value(name, service="C-STORE") == 2
        name = "dicomvault_stored_bytes_total"
        assert (
            after.value(name, service="C-STORE") - before.value(name, service="C-STORE")
            == stored_size
        )
        name = "dicomvault_store_duration_seconds_count"
        assert after.value(name, service="C-STORE") - before.value(name, service="C-STORE") == 2

    def test_query_counted(self, archive: DicomvaultServer, http: httpx.Client) -> None:
        storescu(archive.port, [CT_FILE], archive.ae_title)
        before = Scrape(http)

        run = findscu(
            archive.port,
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "PatientName": ""},
            archive.ae_title,
        )

        assert run.status == 0, run.describe()
        after = Scrape(http)
        labels = {"service": "C-FIND"}
        for name, expected in (
            ("dicomvault_queries_total", 1),
            ("dicomvault_query_matches_total", len(run.responses)),
            ("dicomvault_query_duration_seconds_count", 1),
        ):
            extra = {"level": "STUDY"} if name == "dicomvault_queries_total" else {}
            assert (
                after.value(name, **labels, **extra) - before.value(name, **labels, **extra)
                == expected
            ), name

    def test_get_counted(self, archive: DicomvaultServer, http: httpx.Client) -> None:
        storescu(archive.port, [CT_FILE], archive.ae_title)
        ds = pydicom.dcmread(CT_FILE)
        stored_size = stored_file_for(archive.data_dir, ds.SOPInstanceUID)[0].stat().st_size
        before = Scrape(http)
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.StudyInstanceUID = ds.StudyInstanceUID
        identifier.SeriesInstanceUID = ds.SeriesInstanceUID
        identifier.SOPInstanceUID = ds.SOPInstanceUID
        ae = AE(ae_title="GETSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_SECONDS
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate(
            LOOPBACK,
            archive.port,
            ae_title=archive.ae_title,
            ext_neg=[build_role(ds.SOPClassUID, scp_role=True)],
            evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)],
        )
        assert assoc.is_established, archive.describe()
        try:
            responses = list(
                assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
            )
        finally:
            assoc.release()

        assert responses[-1][0].Status == 0x0000
        after = Scrape(http)
        labels = {"operation": "C-GET"}
        for name, extra, expected in (
            ("dicomvault_retrieves_total", {"outcome": "success"}, 1),
            ("dicomvault_retrieve_sub_operations_total", {"result": "completed"}, 1),
            ("dicomvault_retrieved_bytes_total", {}, stored_size),
        ):
            assert (
                after.value(name, **labels, **extra) - before.value(name, **labels, **extra)
                == expected
            ), name

    def test_associations_counted(self, archive: DicomvaultServer, http: httpx.Client) -> None:
        before = Scrape(http)

        accepted = echoscu(archive.port, archive.ae_title, calling_ae="STORESCU")
        rejected = echoscu(archive.port, archive.ae_title, calling_ae="OTHERSCU")

        assert accepted.returncode == 0, accepted.describe()
        assert rejected.returncode != 0, rejected.describe()
        after = Scrape(http)
        name = "dicomvault_dimse_associations_accepted_total"
        assert after.value(name) - before.value(name) == 1
        name = "dicomvault_dimse_associations_ended_total"
        assert after.value(name, outcome="released") - before.value(name, outcome="released") == 1
        name = "dicomvault_dimse_associations_rejected_total"
        reason = "calling-AE-title-not-recognized"
        assert after.value(name, reason=reason) - before.value(name, reason=reason) == 1
        assert after.value("dicomvault_dimse_associations_open") == 0

    def test_http_requests_counted(self, http: httpx.Client) -> None:
        before = Scrape(http)

        http.get("/ready")
        http.get("/no/such/page")

        after = Scrape(http)
        name = "dicomvault_http_requests_total"
        for route, status in (("/ready", "200"), ("unmatched", "404")):
            labels = {"method": "GET", "route": route, "status": status}
            assert after.value(name, **labels) - before.value(name, **labels) == 1, route


class TestDrain:
    def test_in_flight_association_finishes(self, start_server: ServerFactory) -> None:
        server = start_server(config=f"{METRICS_CONFIG}\n[server]\ndrain_delay = 1.0\n")
        assoc = hold_association(server)
        ready_url = f"http://{LOOPBACK}:{server.http_port}/ready"

        send_signal(server, signal.SIGTERM)

        response = httpx.get(ready_url, timeout=TIMEOUT_SECONDS)
        assert response.status_code == 503, response.text
        assert response.json() == {"status": "draining", "checks": {}}
        assert wait_until(lambda: not port_accepts_connections(server.port), 10), server.describe()
        refused = echoscu(server.port, server.ae_title, calling_ae="HOLDSCU")
        assert refused.returncode != 0, refused.describe()
        status = assoc.send_c_store(pydicom.dcmread(CT_FILE))
        assoc.release()
        assert status.Status == 0x0000
        assert wait_for_exit(server, 10) == 0
        assert "Drained in" in server.log_text(), server.describe()
        assert "Aborting association" not in server.log_text()

    def test_deadline_aborts_association(self, start_server: ServerFactory) -> None:
        server = start_server(config="[server]\ndrain_seconds = 1.0\n")
        assoc = hold_association(server)
        signalled = time.monotonic()

        send_signal(server, signal.SIGTERM)

        assert wait_for_exit(server, 10) == 0
        assert time.monotonic() - signalled < 8
        assert wait_until(lambda: assoc.is_aborted, 5)
        assert "Aborting association with HOLDSCU" in server.log_text(), server.describe()

    def test_second_signal_stops_at_once(self, start_server: ServerFactory) -> None:
        server = start_server(config="[server]\ndrain_seconds = 120\n")
        assoc = hold_association(server)
        send_signal(server, signal.SIGTERM)
        assert wait_until(lambda: not port_accepts_connections(server.port), 10)
        signalled = time.monotonic()

        send_signal(server, signal.SIGTERM)

        assert wait_for_exit(server, 10) == 0
        assert time.monotonic() - signalled < 8
        assert wait_until(lambda: assoc.is_aborted, 5)
        assert "Stopped after a second stop signal" in server.log_text(), server.describe()
