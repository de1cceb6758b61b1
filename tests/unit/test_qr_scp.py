"""The C-FIND handler with an in-process archive: cancel, limits and failures.

The service class that sends its responses runs in an in-process DIMSE
server, with a pynetdicom SCU.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
)

from dicomvault.archive import Archive
from dicomvault.audit import AuditEvent
from dicomvault.config import load_settings
from dicomvault.dimse import qr_scp, server
from dicomvault.dimse.direct_send import MessageWriter
from dicomvault.dimse.qr_scp import ExtendedNegotiation, handle_find
from dicomvault.dimse.server import DimseServer
from dicomvault.dimse.status import Status
from dicomvault.events import QueryPerformed
from dicomvault.index.database import open_index_engine
from dicomvault.permissions import ALL_PERMISSIONS, Permission
from dicomvault.storage.filesystem import FilesystemStorage
from tests.support.access import FakeAssociation, granted_access
from tests.support.datasets import encode_dataset
from tests.support.network import LOOPBACK, free_port

STUDIES = 6
TIMEOUT_SECONDS = 30


def build_archive(data_dir: Path, **overrides: Any) -> Archive:
    """Store STUDIES studies in a new archive under ``data_dir``; ``overrides`` are settings."""
    settings = load_settings(
        environ={},
        overrides={
            "storage.data_dir": str(data_dir),
            "query.max_matches": 4,
            **overrides,
        },
    )
    engine = open_index_engine(settings.index_url)
    archive = Archive(settings, engine, FilesystemStorage(data_dir / "storage"))
    for number in range(STUDIES):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = f"1.2.3.{number}.1"
        ds.StudyInstanceUID = f"1.2.3.{number}"
        ds.SeriesInstanceUID = f"1.2.3.{number}.2"
        ds.PatientName = f"FIND^{number}"
        ds.PatientID = f"P{number}"
        ds.Modality = "CT"
        archive.store(encode_dataset(ds), ExplicitVRLittleEndian)
    return archive


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    return build_archive(tmp_path)


class FakeEvent:
    """Enough of a pynetdicom C-FIND event; cancels after ``cancel_after`` checks."""

    def __init__(self, identifier: Dataset, cancel_after: int | None = None) -> None:
        self.identifier = identifier
        self.assoc = FakeAssociation()
        self.request = SimpleNamespace(
            AffectedSOPClassUID=StudyRootQueryRetrieveInformationModelFind
        )
        self._cancel_after = cancel_after
        self._checks = 0

    @property
    def is_cancelled(self) -> bool:
        self._checks += 1
        return self._cancel_after is not None and self._checks > self._cancel_after


def find(
    event: FakeEvent, archive: Archive, permissions: frozenset[Permission] = ALL_PERMISSIONS
) -> list[tuple[Any, Dataset | None]]:
    """Run the C-FIND handler on an association admitted with ``permissions``."""
    access = granted_access(archive, event.assoc, permissions)
    return list(handle_find(event, archive, ExtendedNegotiation(), access))


def study_identifier(**keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientName = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def statuses(responses: list[tuple[Any, Any]]) -> list[int]:
    return [
        int(status) if isinstance(status, int) else int(status.Status) for status, _ in responses
    ]


class TestHandleFind:
    def test_cancel_stops_responses(self, archive: Archive) -> None:
        event = FakeEvent(study_identifier(PatientName="FIND^*"), cancel_after=0)
        responses = find(event, archive)

        assert statuses(responses) == [Status.CANCEL]

    def test_cancel_after_two_matches(self, archive: Archive) -> None:
        event = FakeEvent(study_identifier(PatientName="FIND^*"), cancel_after=2)
        responses = find(event, archive)

        assert statuses(responses) == [Status.PENDING, Status.PENDING, Status.CANCEL]

    def test_limit_ends_with_failure(self, archive: Archive) -> None:
        event = FakeEvent(study_identifier(PatientName="FIND^*"))
        responses = find(event, archive)

        assert statuses(responses) == [Status.PENDING] * 4 + [Status.FIND_OUT_OF_RESOURCES]
        assert responses[-1][0].ErrorComment == "More than 4 matches; refine the query"

    def test_invalid_level_fails(self, archive: Archive) -> None:
        event = FakeEvent(study_identifier(QueryRetrieveLevel="FOO"))
        responses = find(event, archive)

        assert statuses(responses) == [Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS]
        assert responses[0][0].ErrorComment.startswith("Query/Retrieve Level (0008,0052)")

    def test_responses_carry_keys(self, archive: Archive) -> None:
        event = FakeEvent(study_identifier(PatientName="FIND^2"))
        responses = find(event, archive)

        identifier = responses[0][1]
        assert statuses(responses) == [Status.PENDING, Status.SUCCESS]
        assert identifier.PatientName == "FIND^2"
        assert identifier.StudyInstanceUID == "1.2.3.2"
        assert identifier.QueryRetrieveLevel == "STUDY"
        assert identifier.RetrieveAETitle == "DICOMVAULT"

    def test_database_failure_reported(self, archive: Archive) -> None:
        archive.engine.dispose()
        (Path(archive.settings.data_dir) / "index.sqlite").unlink()
        (Path(archive.settings.data_dir) / "index.sqlite").write_bytes(b"")
        event = FakeEvent(study_identifier(PatientName="FIND^*"))
        responses = find(event, archive)

        assert statuses(responses) == [Status.UNABLE_TO_PROCESS]
        assert responses[0][0].ErrorComment == "The index database failed"

    def test_query_event(self, archive: Archive) -> None:
        queries: list[QueryPerformed] = []
        archive.events.subscribe(QueryPerformed, queries.append)
        event = FakeEvent(study_identifier(PatientName="FIND^2"))

        find(event, archive)

        assert len(queries) == 1
        assert queries[0].service == "C-FIND"
        assert queries[0].matches == 1
        assert queries[0].duration > 0
        assert not queries[0].failed

    def test_database_failure_event(self, archive: Archive) -> None:
        queries: list[QueryPerformed] = []
        archive.events.subscribe(QueryPerformed, queries.append)
        archive.engine.dispose()
        (Path(archive.settings.data_dir) / "index.sqlite").unlink()
        (Path(archive.settings.data_dir) / "index.sqlite").write_bytes(b"")

        find(FakeEvent(study_identifier(PatientName="FIND^*")), archive)

        assert [(query.service, query.failed) for query in queries] == [("C-FIND", True)]


class TestAccess:
    def test_without_query_permission_refused(self, archive: Archive) -> None:
        queries: list[QueryPerformed] = []
        audited: list[AuditEvent] = []
        archive.events.subscribe(QueryPerformed, queries.append)
        archive.events.subscribe(AuditEvent, audited.append)
        event = FakeEvent(study_identifier(PatientName="FIND^*"))

        responses = find(event, archive, frozenset({Permission.STORE}))

        assert statuses(responses) == [Status.NOT_AUTHORIZED]
        assert responses[0][0].ErrorComment == "TESTSCU lacks the query permission for C-FIND"
        assert responses[0][1] is None
        assert queries == []
        assert [event.description for event in audited] == [
            "C-FIND refused: registered node TESTSCU lacks the query permission"
        ]

    def test_unknown_caller_named_in_audit(self, archive: Archive) -> None:
        audited: list[AuditEvent] = []
        archive.events.subscribe(AuditEvent, audited.append)
        event = FakeEvent(study_identifier(PatientName="FIND^*"))
        access = granted_access(archive, event.assoc, frozenset(), registered=False)

        responses = list(handle_find(event, archive, ExtendedNegotiation(), access))

        assert statuses(responses) == [Status.NOT_AUTHORIZED]
        assert audited[0].detail["caller"] == "unknown caller"
        assert audited[0].source == "127.0.0.1"
        assert audited[0].actor == "TESTSCU"


@pytest.fixture
def dimse_server(tmp_path: Path) -> Iterator[DimseServer]:
    """A DIMSE server on 127.0.0.1 over an archive with STUDIES studies; stopped at the end."""
    archive = build_archive(tmp_path, **{"dimse.host": LOOPBACK, "dimse.port": free_port()})
    dimse = DimseServer(archive)
    dimse.start()
    yield dimse
    dimse.stop(timeout=TIMEOUT_SECONDS)
    archive.engine.dispose()


@pytest.fixture
def pynetdicom_debug() -> Iterator[None]:
    """Log pynetdicom at DEBUG for the test, as ``dicomvault serve -v DEBUG`` does."""
    logger = logging.getLogger("pynetdicom")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield
    logger.setLevel(level)


def send_find(
    dimse: DimseServer, identifier: Dataset, transfer_syntax: str = ExplicitVRLittleEndian
) -> list[tuple[int, str | None, Dataset | None]]:
    """Send one Study Root C-FIND; return each response's status, Error Comment and Identifier."""
    ae = AE(ae_title="FINDSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_SECONDS
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind, [transfer_syntax])
    assoc = ae.associate(LOOPBACK, dimse.settings.port, ae_title=dimse.settings.ae_title)
    assert assoc.is_established
    try:
        responses = [
            (int(status.Status), status.get("ErrorComment"), found)
            for status, found in assoc.send_c_find(
                identifier, StudyRootQueryRetrieveInformationModelFind
            )
        ]
    finally:
        assoc.release()
    return responses


class TestFindServiceClass:
    def test_matches_then_success(self, dimse_server: DimseServer) -> None:
        responses = send_find(dimse_server, study_identifier(PatientName="FIND^2"))

        assert [status for status, _, _ in responses] == [Status.PENDING, Status.SUCCESS]
        identifier = responses[0][2]
        assert identifier is not None
        assert identifier.PatientName == "FIND^2"
        assert identifier.StudyInstanceUID == "1.2.3.2"
        assert identifier.RetrieveAETitle == "DICOMVAULT"

    def test_limit_ends_with_failure(self, dimse_server: DimseServer) -> None:
        responses = send_find(dimse_server, study_identifier(PatientName="FIND^*"))

        assert [status for status, _, _ in responses] == [Status.PENDING] * 4 + [
            Status.FIND_OUT_OF_RESOURCES
        ]
        assert responses[-1][1] == "More than 4 matches; refine the query"

    def test_pending_written_by_association_thread(
        self, dimse_server: DimseServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        written: list[bytes] = []
        original = MessageWriter.write

        def write(self: MessageWriter, context_id: int, command_set: bytes, *args: Any) -> None:
            written.append(command_set)
            original(self, context_id, command_set, *args)

        monkeypatch.setattr(MessageWriter, "write", write)

        responses = send_find(dimse_server, study_identifier(PatientName="FIND^2"))

        assert len(responses) == 2
        assert len(written) == 1

    @pytest.mark.parametrize(
        "transfer_syntax",
        [
            pytest.param(ExplicitVRLittleEndian, id="explicit"),
            pytest.param(ImplicitVRLittleEndian, id="implicit"),
        ],
    )
    def test_same_responses_as_pynetdicom(
        self, dimse_server: DimseServer, transfer_syntax: str, request: pytest.FixtureRequest
    ) -> None:
        identifier = study_identifier(PatientName="FIND^*", PatientID="", ModalitiesInStudy="")
        ours = send_find(dimse_server, identifier, transfer_syntax)
        request.getfixturevalue("pynetdicom_debug")

        theirs = send_find(dimse_server, identifier, transfer_syntax)

        assert ours == theirs

    def test_handler_failure(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        def fail(*args: Any) -> Iterator[tuple[int, Dataset | None]]:
            yield Status.PENDING, study_identifier()
            raise RuntimeError("handler bug")

        monkeypatch.setattr(server, "handle_find", fail)
        archive = build_archive(tmp_path, **{"dimse.host": LOOPBACK, "dimse.port": free_port()})
        dimse = DimseServer(archive)
        dimse.start()
        try:
            responses = send_find(dimse, study_identifier())
        finally:
            dimse.stop(timeout=TIMEOUT_SECONDS)

        assert [status for status, _, _ in responses] == [Status.PENDING, 0xC311]

    def test_unencodable_identifier(
        self, dimse_server: DimseServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(qr_scp, "encode_identifier", lambda *args: None)

        responses = send_find(dimse_server, study_identifier(PatientName="FIND^2"))

        assert [status for status, _, _ in responses] == [0xC312]
