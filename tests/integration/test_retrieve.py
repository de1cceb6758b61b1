"""C-MOVE to DCMTK's storescp and C-GET, with movescu, getscu and a pynetdicom SCU."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from tests.support.cli import run_cli
from tests.support.corpus import PYDICOM_TEST_FILES, BundledFile, bundled_files, make_uid
from tests.support.network import LOOPBACK, free_port, port_accepts_connections, wait_until
from tests.support.pixels import decodes, pick_corpus, pixels
from tests.support.process import run_tool
from tests.support.scu import send_file_unchanged
from tests.support.server import DicomvaultServer, ServerFactory

pytestmark = pytest.mark.integration

DESTINATION = "STORESCP"
TIMEOUT_SECONDS = 30
# One bundled file per transfer syntax, among those pylibjpeg and pydicom decode.
SYNTAXES = [
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGLSLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
]


CORPUS = pick_corpus(SYNTAXES)


@pytest.fixture(scope="module")
def index_backend() -> str:
    """SQLite only: C-MOVE and C-GET select instances through the index queries that
    test_find and test_two_nodes run on PostgreSQL; what these tests add is the
    DIMSE exchange, which does not depend on the back-end.
    """
    return "sqlite"


class Storescp:
    """DCMTK's storescp as a C-MOVE destination on a loopback port."""

    def __init__(self, out_dir: Path, options: list[str]) -> None:
        self.port = free_port()
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["storescp", "-aet", DESTINATION, "-od", str(out_dir), *options, str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        if not wait_until(lambda: port_accepts_connections(self.port), TIMEOUT_SECONDS):
            self.stop()
            raise AssertionError(f"storescp did not listen on {LOOPBACK}:{self.port}")

    def received(self) -> dict[str, Path]:
        """Map SOP Instance UID to each received file."""
        files = {}
        for path in self.out_dir.iterdir():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            files[str(ds.SOPInstanceUID)] = path
        return files

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@pytest.fixture
def archive(start_server: ServerFactory) -> DicomvaultServer:
    """An archive holding the corpus."""
    server = start_server()
    for bundled in CORPUS:
        rsp = send_file_unchanged(server.port, bundled.path, server.ae_title)
        assert rsp.status == 0x0000, (bundled.name, rsp.error_comment)
    return server


def register_destination(server: DicomvaultServer, port: int, tmp_path: Path) -> None:
    args = [
        "node",
        "add",
        DESTINATION,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--data-dir",
        str(server.data_dir),
    ]
    if server.index_url:
        args += ["--index-url", server.index_url]
    run = run_cli(args, tmp_path)
    assert run.returncode == 0, run.describe()


@pytest.fixture
def destination(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Storescp]:
    options = getattr(request, "param", ["+xa"])
    receiver = Storescp(tmp_path / "received", options)
    yield receiver
    receiver.stop()


def study_identifier(study_uids: list[str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uids if len(study_uids) > 1 else study_uids[0]
    return ds


def move(
    server: DicomvaultServer, identifier: Dataset, destination: str, cancel_after: int | None = None
) -> tuple[list[Dataset], Dataset, Dataset | None]:
    """Send a Study Root C-MOVE; return the pending statuses, the final status and identifier."""
    ae = AE(ae_title="MOVESCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_SECONDS
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(LOOPBACK, server.port, ae_title=server.ae_title)
    assert assoc.is_established, server.describe()
    pending: list[Dataset] = []
    final = None
    final_identifier = None
    try:
        responses = assoc.send_c_move(
            identifier, destination, StudyRootQueryRetrieveInformationModelMove, msg_id=7
        )
        for status, response in responses:
            assert status is not None and "Status" in status, "no C-MOVE response"
            if status.Status == 0xFF00:
                pending.append(status)
                if cancel_after is not None and len(pending) == cancel_after:
                    assoc.send_c_cancel(7, query_model=StudyRootQueryRetrieveInformationModelMove)
            else:
                final, final_identifier = status, response
    finally:
        if assoc.is_established:
            assoc.release()
    assert final is not None
    return pending, final, final_identifier


class TestMoveToStorescp:
    def test_every_file_arrives_as_stored(
        self, archive: DicomvaultServer, destination: Storescp, tmp_path: Path
    ) -> None:
        register_destination(archive, destination.port, tmp_path)
        studies = sorted({b.study_instance_uid for b in CORPUS})

        pending, final, _ = move(archive, study_identifier(studies), DESTINATION)

        assert final.Status == 0x0000
        assert final.NumberOfCompletedSuboperations == len(CORPUS)
        assert final.NumberOfFailedSuboperations == 0
        # Pending responses come at most every 200 ms.
        assert len(pending) <= len(CORPUS) - 1
        received = destination.received()
        for bundled in CORPUS:
            path = received[bundled.sop_instance_uid]
            sent = pydicom.dcmread(path, stop_before_pixels=True)
            # Each stored syntax is proposed and storescp +xa accepts it. Two
            # arrive in Explicit VR Little Endian: Implicit VR Little Endian,
            # because it shares a context with Explicit VR Little Endian, which
            # storescp prefers, and deflated datasets, which are re-encoded.
            expected = bundled.transfer_syntax_uid
            if expected in (uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian):
                expected = uid.ExplicitVRLittleEndian
            assert sent.file_meta.TransferSyntaxUID == expected, bundled.name
            assert np.array_equal(pixels(path), pixels(bundled.path)), bundled.name

    @pytest.mark.parametrize("destination", [["+xi"]], indirect=True, ids=["implicit-only"])
    def test_implicit_only_destination_gets_decoded(
        self, archive: DicomvaultServer, destination: Storescp, tmp_path: Path
    ) -> None:
        register_destination(archive, destination.port, tmp_path)
        studies = sorted({b.study_instance_uid for b in CORPUS})

        _, final, _ = move(archive, study_identifier(studies), DESTINATION)

        assert final.Status == 0x0000, final
        received = destination.received()
        for bundled in CORPUS:
            path = received[bundled.sop_instance_uid]
            sent = pydicom.dcmread(path, stop_before_pixels=True)
            assert sent.file_meta.TransferSyntaxUID == uid.ImplicitVRLittleEndian, bundled.name
            assert np.array_equal(pixels(path), pixels(bundled.path)), bundled.name

    def test_movescu_interoperates(
        self, archive: DicomvaultServer, destination: Storescp, tmp_path: Path
    ) -> None:
        register_destination(archive, destination.port, tmp_path)
        first = CORPUS[0]

        run = run_tool(
            [
                "movescu",
                "-S",
                "-aet",
                "MOVESCU",
                "-aec",
                archive.ae_title,
                "-aem",
                DESTINATION,
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={first.study_instance_uid}",
                LOOPBACK,
                str(archive.port),
            ]
        )

        assert run.returncode == 0, run.describe()
        assert first.sop_instance_uid in destination.received()


class TestMoveFailures:
    def test_unknown_destination(self, archive: DicomvaultServer) -> None:
        _, final, _ = move(archive, study_identifier([CORPUS[0].study_instance_uid]), "NOBODY")

        assert final.Status == 0xA801
        assert final.ErrorComment.startswith("Unknown move destination NOBODY")

    def test_unreachable_destination(self, archive: DicomvaultServer, tmp_path: Path) -> None:
        register_destination(archive, free_port(), tmp_path)

        _, final, identifier = move(
            archive, study_identifier([CORPUS[0].study_instance_uid]), DESTINATION
        )

        assert final.Status == 0xA702
        assert final.NumberOfFailedSuboperations == 1
        assert identifier is not None
        assert identifier.FailedSOPInstanceUIDList == CORPUS[0].sop_instance_uid

    def test_missing_unique_key(self, archive: DicomvaultServer) -> None:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.PatientName = "*"

        _, final, _ = move(archive, identifier, DESTINATION)

        assert final.Status == 0xA900
        assert final.ErrorComment == "STUDY level retrieve needs StudyInstanceUID (UID or list)"


class TestGet:
    def test_getscu_receives_study(self, archive: DicomvaultServer, tmp_path: Path) -> None:
        first = CORPUS[0]
        out_dir = tmp_path / "get"
        out_dir.mkdir()

        run = run_tool(
            [
                "getscu",
                "-S",
                "-aet",
                "GETSCU",
                "-aec",
                archive.ae_title,
                "-od",
                str(out_dir),
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={first.study_instance_uid}",
                LOOPBACK,
                str(archive.port),
            ]
        )

        assert run.returncode == 0, run.describe()
        received = [
            pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in out_dir.iterdir()
        ]
        assert received == [first.sop_instance_uid]


# Large enough that the first pending response, 200 ms in, comes mid-way.
CANCEL_STUDY_SIZE = 300


def store_generated_study(server: DicomvaultServer, size: int) -> str:
    """Store `size` small CT instances of one new study; return its Study Instance UID."""
    study_uid = make_uid("retrieve-cancel", "study")
    ae = AE(ae_title="LOADSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_SECONDS
    ae.add_requested_context(CTImageStorage, uid.ExplicitVRLittleEndian)
    assoc = ae.associate(LOOPBACK, server.port, ae_title=server.ae_title)
    assert assoc.is_established, server.describe()
    try:
        for number in range(size):
            ds = Dataset()
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = make_uid("retrieve-cancel", str(number))
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = make_uid("retrieve-cancel", "series")
            ds.PatientID = "CANCEL-1"
            ds.Modality = "CT"
            ds.Rows = ds.Columns = 64
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.PixelData = np.full((64, 64), number, dtype=np.uint16).tobytes()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
            assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    return study_uid


def test_cancel_stops_between_instances(
    start_server: ServerFactory, destination: Storescp, tmp_path: Path
) -> None:
    server = start_server()
    study_uid = store_generated_study(server, CANCEL_STUDY_SIZE)
    register_destination(server, destination.port, tmp_path)

    pending, final, _ = move(server, study_identifier([study_uid]), DESTINATION, cancel_after=1)

    assert final.Status == 0xFE00, final
    assert final.NumberOfRemainingSuboperations > 0
    assert len(pending) < CANCEL_STUDY_SIZE
    total = (
        final.NumberOfCompletedSuboperations
        + final.NumberOfFailedSuboperations
        + final.NumberOfWarningSuboperations
        + final.NumberOfRemainingSuboperations
    )
    assert total == CANCEL_STUDY_SIZE
    assert len(destination.received()) == final.NumberOfCompletedSuboperations


def test_get_cancel_on_the_same_association(start_server: ServerFactory) -> None:
    """A C-CANCEL that arrives while the archive waits for a C-STORE response stops the C-GET."""
    server = start_server()
    study_uid = store_generated_study(server, CANCEL_STUDY_SIZE)
    received: list[str] = []
    cancel_after = 5

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        if len(received) == cancel_after:
            event.assoc.send_c_cancel(9, query_model=StudyRootQueryRetrieveInformationModelGet)
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_SECONDS
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, uid.ExplicitVRLittleEndian)
    assoc = ae.associate(
        LOOPBACK,
        server.port,
        ae_title=server.ae_title,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established, server.describe()
    statuses = []
    try:
        responses = assoc.send_c_get(
            study_identifier([study_uid]), StudyRootQueryRetrieveInformationModelGet, msg_id=9
        )
        statuses = [status for status, _ in responses]
    finally:
        if assoc.is_established:
            assoc.release()

    final = statuses[-1]
    assert final.Status == 0xFE00, final
    assert final.NumberOfCompletedSuboperations == len(received) < CANCEL_STUDY_SIZE
    assert (
        final.NumberOfCompletedSuboperations
        + final.NumberOfFailedSuboperations
        + final.NumberOfWarningSuboperations
        + final.NumberOfRemainingSuboperations
        == CANCEL_STUDY_SIZE
    )


ALL_BUNDLED = bundled_files(PYDICOM_TEST_FILES)
# Files storescp 3.6.7 rejects with 0xC000 because DCMTK cannot parse them:
# their encapsulated Pixel Data has VR OW instead of OB.
REJECTED_BY_STORESCP = {"test_files/rtdose_rle.dcm", "test_files/rtdose_rle_1frame.dcm"}


def test_every_stored_bundled_file_moved(
    start_server: ServerFactory, destination: Storescp, tmp_path: Path
) -> None:
    server = start_server()
    newest: dict[str, BundledFile] = {}
    for bundled in ALL_BUNDLED:
        rsp = send_file_unchanged(server.port, bundled.path, server.ae_title)
        if rsp.status == 0x0000:
            newest[bundled.sop_instance_uid] = bundled
    register_destination(server, destination.port, tmp_path)
    studies = sorted({b.study_instance_uid for b in newest.values()})
    expected_failed = {uid for uid, b in newest.items() if b.name in REJECTED_BY_STORESCP}

    _, final, identifier = move(server, study_identifier(studies), DESTINATION)

    failed: set[str] = set()
    if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
        value = identifier.FailedSOPInstanceUIDList
        # pydicom returns one UID as a str and several as a list.
        failed = {value} if isinstance(value, str) else set(value)
    assert failed == expected_failed, server.log_text()
    assert final.Status == (0xB000 if expected_failed else 0x0000)
    assert final.NumberOfCompletedSuboperations == len(newest) - len(expected_failed)
    received = destination.received()
    for sop_instance_uid, bundled in newest.items():
        if sop_instance_uid in expected_failed:
            continue
        path = received[sop_instance_uid]
        if decodes(bundled.path):
            assert np.array_equal(pixels(path), pixels(bundled.path)), bundled.name


class SlowDestination:
    """A pynetdicom Storage SCP that takes `delay` seconds over each C-STORE."""

    def __init__(self, delay: float) -> None:
        self.received: list[str] = []

        def handle_store(event: Any) -> int:
            time.sleep(delay)
            self.received.append(str(event.request.AffectedSOPInstanceUID))
            return 0x0000

        ae = AE(ae_title=DESTINATION)
        ae.add_supported_context(CTImageStorage, uid.ExplicitVRLittleEndian)
        self.port = free_port()
        self.server = ae.start_server(
            (LOOPBACK, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)]
        )

    def stop(self) -> None:
        self.server.shutdown()


def test_move_longer_than_network_timeout_ends_cleanly(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    # The requestor sends nothing while the move runs; the archive must not
    # take that silence for a dead peer.
    server = start_server(env={"DICOMVAULT_DIMSE_NETWORK_TIMEOUT": "1"})
    study_uid = store_generated_study(server, 8)
    slow = SlowDestination(delay=0.3)
    try:
        register_destination(server, slow.port, tmp_path)
        ae = AE(ae_title="MOVESCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_SECONDS
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        ae.add_requested_context(Verification)
        assoc = ae.associate(LOOPBACK, server.port, ae_title=server.ae_title)
        assert assoc.is_established, server.describe()
        statuses = [
            status.Status
            for status, _ in assoc.send_c_move(
                study_identifier([study_uid]),
                DESTINATION,
                StudyRootQueryRetrieveInformationModelMove,
            )
        ]
        # A client may pause before its next request on the same association.
        time.sleep(0.2)
        echo = assoc.send_c_echo()
        if assoc.is_established:
            assoc.release()
    finally:
        slow.stop()

    assert statuses[-1] == 0x0000, server.log_text()
    assert echo is not None and echo.Status == 0x0000, server.log_text()
    assert assoc.is_released and not assoc.is_aborted, server.log_text()
    assert len(slow.received) == 8
