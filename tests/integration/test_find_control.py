"""C-FIND limits and negotiation over a real association, driven by a pynetdicom SCU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
)

from tests.support.corpus import make_uid
from tests.support.network import LOOPBACK
from tests.support.server import DicomvaultServer, ServerFactory

pytestmark = pytest.mark.integration

TIMEOUT_SECONDS = 30


def make_ct(
    study: str, instance: int, study_date: str = "20200101", study_time: str = "120000"
) -> Dataset:
    """Build a small CT instance of `study` without pixel data."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = make_uid("find-control", study, str(instance))
    ds.StudyInstanceUID = make_uid("find-control", study)
    ds.SeriesInstanceUID = make_uid("find-control", study, "series")
    ds.PatientName = f"CONTROL^{study}"
    ds.PatientID = f"CTRL-{study}"
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.Modality = "CT"
    ds.InstanceNumber = instance
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@contextmanager
def association(server: DicomvaultServer, ext_neg: list[Any] | None = None) -> Iterator[Any]:
    """Open an association for CT storage and Study Root C-FIND; release it at the end."""
    ae = AE(ae_title="CONTROLSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_SECONDS
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(LOOPBACK, server.port, ae_title=server.ae_title, ext_neg=ext_neg)
    assert assoc.is_established, server.describe()
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def store_all(server: DicomvaultServer, datasets: list[Dataset]) -> None:
    """Store `datasets` on one association, asserting success for each."""
    with association(server) as assoc:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            assert status.Status == 0x0000, ds.SOPInstanceUID


def find(assoc: Any, identifier: Dataset) -> tuple[list[Dataset], Dataset]:
    """Run a Study Root C-FIND; return the pending identifiers and the final status."""
    pending = []
    final = None
    for status, response in assoc.send_c_find(
        identifier, StudyRootQueryRetrieveInformationModelFind
    ):
        assert status is not None and "Status" in status, "no C-FIND response"
        if status.Status in (0xFF00, 0xFF01):
            pending.append(response)
        else:
            final = status
    assert final is not None
    return pending, final


def study_query(**keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.StudyDate = ""
    ds.StudyTime = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


class TestMaxMatches:
    def test_answer_stops_at_limit(self, start_server: ServerFactory) -> None:
        server = start_server(config="[query]\nmax_matches = 3\n")
        store_all(server, [make_ct(f"limit{n}", 1) for n in range(5)])

        with association(server) as assoc:
            pending, final = find(assoc, study_query(PatientName="CONTROL^LIMIT*"))

        assert len(pending) == 3
        assert final.Status == 0xA700
        assert final.ErrorComment == "More than 3 matches; refine the query"

    def test_answer_under_limit_succeeds(self, start_server: ServerFactory) -> None:
        server = start_server(config="[query]\nmax_matches = 3\n")
        store_all(server, [make_ct(f"under{n}", 1) for n in range(3)])

        with association(server) as assoc:
            pending, final = find(assoc, study_query(PatientName="CONTROL^UNDER*"))

        assert len(pending) == 3
        assert final.Status == 0x0000


class TestCombinedDateTime:
    """Combined date and time range matching, PS3.4 C.2.2.2.5.2."""

    @staticmethod
    def combined_negotiation() -> list[Any]:
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = StudyRootQueryRetrieveInformationModelFind
        # Bytes: relational queries, combined date-time matching.
        item.service_class_application_information = b"\x00\x01"
        return [item]

    @pytest.fixture
    def server(self, start_server: ServerFactory) -> DicomvaultServer:
        server = start_server()
        store_all(
            server,
            [
                make_ct("early", 1, study_date="20200101", study_time="090000"),
                make_ct("inside", 1, study_date="20200102", study_time="050000"),
            ],
        )
        return server

    def test_negotiated_ranges_combine(self, server: DicomvaultServer) -> None:
        query = study_query(StudyDate="20200101-20200103", StudyTime="1000-1800")
        with association(server, self.combined_negotiation()) as assoc:
            pending, final = find(assoc, query)

        assert final.Status == 0x0000
        assert [ds.StudyDate for ds in pending] == ["20200102"]

    def test_ranges_independent_by_default(self, server: DicomvaultServer) -> None:
        query = study_query(StudyDate="20200101-20200103", StudyTime="1000-1800")
        with association(server) as assoc:
            pending, final = find(assoc, query)

        assert final.Status == 0x0000
        assert pending == []


class TestInvalidIdentifier:
    def test_reversed_time_range_rejected(self, start_server: ServerFactory) -> None:
        server = start_server()
        with association(server) as assoc:
            pending, final = find(assoc, study_query(StudyTime="2300-0100"))

        assert pending == []
        assert final.Status == 0xA900
        assert final.ErrorComment.startswith("Invalid range in StudyTime")
