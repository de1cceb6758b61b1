"""`dicomvault serve`: stop on SIGTERM, calling AE allow-list, duplicate policy, restart."""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage

from tests.support.corpus import PYDICOM_TEST_FILES, make_uid, stored_file_for, write_instance
from tests.support.dcmtk import FindRun, echoscu, findscu, format_status, is_failure, storescu
from tests.support.scu import send_file_unchanged
from tests.support.server import DicomvaultServer, ServerFactory, ServerStartError

pytestmark = pytest.mark.integration

SUCCESS = 0x0000
# Seconds a server with no association in flight may take to exit after SIGTERM.
SIGTERM_EXIT_SECONDS = 10


@pytest.fixture(scope="module")
def index_backend() -> str:
    """Starting, stopping and restarting do not depend on the index back-end; test_store and
    test_find run whole servers on PostgreSQL.
    """
    return "sqlite"


def write_copy(folder: Path, name: str, patient_name: str) -> tuple[Path, Dataset]:
    """Write an instance whose UIDs depend only on `name`, with the given Patient's Name."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = make_uid("lifecycle", name, "instance")
    ds.StudyInstanceUID = make_uid("lifecycle", name, "study")
    ds.SeriesInstanceUID = make_uid("lifecycle", name, "series")
    ds.PatientName = patient_name
    ds.PatientID = f"LIFE-{name}"
    ds.Modality = "OT"
    path = write_instance(folder / f"{name}-{patient_name.replace('^', '-')}.dcm", ds)
    return path, ds


def store_one(server: DicomvaultServer, path: Path) -> tuple[int | None, str | None]:
    """Send one file with storescu and return the status and Error Comment."""
    run = storescu(server.port, [path], server.ae_title)
    result = run.results[str(path)]
    assert result.sent, f"storescu did not send {path.name}:\n{run.run.describe()}"
    return result.status, result.error_comment


def find_instance(server: DicomvaultServer, ds: Dataset) -> FindRun:
    """Query IMAGE level for `ds`, returning Patient's Name too."""
    run = findscu(
        server.port,
        {
            "QueryRetrieveLevel": "IMAGE",
            "StudyInstanceUID": ds.StudyInstanceUID,
            "SeriesInstanceUID": ds.SeriesInstanceUID,
            "SOPInstanceUID": ds.SOPInstanceUID,
        },
        server.ae_title,
    )
    assert run.status == SUCCESS, run.describe()
    return run


def find_patient_name(server: DicomvaultServer, ds: Dataset) -> list[str]:
    """Query STUDY level for the study of `ds` and return the Patient's Name of each match."""
    run = findscu(
        server.port,
        {
            "QueryRetrieveLevel": "STUDY",
            "StudyInstanceUID": ds.StudyInstanceUID,
            "PatientName": "",
        },
        server.ae_title,
    )
    assert run.status == SUCCESS, run.describe()
    return [str(rsp.PatientName) for rsp in run.responses]


def test_sigterm_exits_cleanly(start_server: ServerFactory) -> None:
    server = start_server()

    returncode = server.stop(timeout=SIGTERM_EXIT_SECONDS)

    assert not server.killed, (
        f"still running {SIGTERM_EXIT_SECONDS} s after SIGTERM, killed\n{server.describe()}"
    )
    assert returncode == 0, server.describe()
    assert re.search(r"(?i)\bstop", server.log_text()), server.describe()


def test_allow_list_rejects_other_ae(start_server: ServerFactory) -> None:
    server = start_server(config='[dimse]\nallowed_calling_ae_titles = ["GOODSCU"]\n')

    rejected = echoscu(server.port, server.ae_title, calling_ae="BADSCU")
    accepted = echoscu(server.port, server.ae_title, calling_ae="GOODSCU")

    assert rejected.returncode != 0, rejected.describe()
    assert "Association Rejected" in rejected.output, rejected.describe()
    assert accepted.returncode == 0, accepted.describe()


def test_duplicate_reject_keeps_first(start_server: ServerFactory, tmp_path: Path) -> None:
    server = start_server(config='[storage]\nduplicate_policy = "reject"\n')
    first, ds = write_copy(tmp_path, "reject", "Reject^First")
    second, _ = write_copy(tmp_path, "reject", "Reject^Second")

    first_status, _ = store_one(server, first)
    second_status, second_comment = store_one(server, second)

    assert first_status == SUCCESS, format_status(first_status)
    assert is_failure(second_status), (
        f"second store answered {format_status(second_status)}, expected a failure"
    )
    assert second_comment, "the failure response has no Error Comment (0000,0902)"
    assert len(find_instance(server, ds).responses) == 1
    assert find_patient_name(server, ds) == ["Reject^First"]


def test_duplicate_replace_keeps_newest(start_server: ServerFactory, tmp_path: Path) -> None:
    server = start_server()
    first, ds = write_copy(tmp_path, "replace", "Replace^First")
    second, _ = write_copy(tmp_path, "replace", "Replace^Second")

    first_status, _ = store_one(server, first)
    second_status, second_comment = store_one(server, second)

    assert first_status == SUCCESS, format_status(first_status)
    assert second_status == SUCCESS, f"{format_status(second_status)} {second_comment!r}"
    assert len(find_instance(server, ds).responses) == 1
    assert find_patient_name(server, ds) == ["Replace^Second"]
    stored = stored_file_for(server.data_dir, ds.SOPInstanceUID)
    assert len(stored) == 1, f"stored files for {ds.SOPInstanceUID}: {stored}"
    assert pydicom.dcmread(stored[0]).PatientName == "Replace^Second"


def test_restart_keeps_index(start_server: ServerFactory, tmp_path: Path) -> None:
    first_server = start_server()
    path, ds = write_copy(tmp_path, "restart", "Restart^Patient")
    status, _ = store_one(first_server, path)
    assert status == SUCCESS, format_status(status)
    first_server.stop()

    second_server = start_server(data_dir=first_server.data_dir, index_url=first_server.index_url)

    assert len(find_instance(second_server, ds).responses) == 1


def test_second_server_on_data_dir_rejected(start_server: ServerFactory, tmp_path: Path) -> None:
    first = start_server()
    second = DicomvaultServer(tmp_path / "second", first.index_url, data_dir=first.data_dir)

    with pytest.raises(ServerStartError):
        second.start()

    assert second.returncode == 1
    assert "is in use by another dicomvault process" in second.log_text()


def test_store_logged_at_info(start_server: ServerFactory, tmp_path: Path) -> None:
    server = start_server()
    path = PYDICOM_TEST_FILES / "CT_small.dcm"

    rsp = send_file_unchanged(server.port, path, server.ae_title)

    assert rsp.status == 0x0000
    expected = (
        "INFO    dicomvault.events: Stored 1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322 "
        "(CT Image Storage) of study"
    )
    assert expected in server.log_text()
