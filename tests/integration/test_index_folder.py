"""`dicomvault index` and `remove`: a folder of mixed files indexed, found, retrieved, pruned.

The corpus is pydicom's own files (test_files with its nested DICOMDIR
folders, and charset_files) plus a text file and a symbolic link to a folder
outside. Expected instances come from tests.support.corpus, which reads the
files with pydicom, not with the archive's reader.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import pydicom
import pytest

from tests.support.cli import run_cli
from tests.support.corpus import (
    PYDICOM_CHARSET_FILES,
    PYDICOM_TEST_FILES,
    BundledFile,
    bundled_files,
    make_uid,
    write_instance,
)
from tests.support.datasets import make_instance
from tests.support.dcmtk import findscu
from tests.support.network import LOOPBACK, wait_until
from tests.support.process import ToolRun, run_tool
from tests.support.server import DicomvaultServer, ServerFactory

pytestmark = pytest.mark.integration

SUCCESS = 0x0000
TRUNCATED = {"MR_truncated.dcm", "rtplan_truncated.dcm"}
TIMEOUT_SECONDS = 60
NOT_DICOM = "Not a DICOM file: no 'DICM' prefix after a 128-byte preamble (PS3.10 7.1)"
NO_META = (
    "No File Meta Information (128-byte preamble, 'DICM' and group 0002), so the transfer "
    "syntax is unknown; convert it with DCMTK's 'dcmconv -f +F IN OUT' and index the result"
)
DICOMDIR = "DICOMDIR (Media Storage Directory Storage): a directory of other files, not an instance"
# Reasons for a few of the files that must be rejected, by name relative to the folder.
EXPECTED_REASONS = {
    "notes.txt": ("failed", NOT_DICOM),
    "test_files/README.txt": ("failed", NOT_DICOM),
    "test_files/MR_truncated.dcm": (
        "failed",
        "The dataset is truncated: Pixel Data declares 8192 bytes but 8130 follow",
    ),
    "test_files/rtplan_truncated.dcm": (
        "failed",
        "The dataset is truncated: (300A,00B0) declares 976 bytes but 711 follow",
    ),
    "test_files/ExplVR_LitEndNoMeta.dcm": ("failed", NO_META),
    "test_files/meta_missing_tsyntax.dcm": (
        "failed",
        "The File Meta Information has no Transfer Syntax UID (0002,0010), so the dataset's "
        "encoding is unknown",
    ),
    "test_files/dicomdirtests/DICOMDIR": ("ignored", DICOMDIR),
    "test_files/dicomdirtests/TINY_ALPHA/DICOMDIR": ("ignored", DICOMDIR),
}


def build_corpus(root: Path) -> tuple[Path, list[BundledFile]]:
    """Fill ROOT/folder with the corpus; return the folder and the valid files in it."""
    folder = root / "folder"
    shutil.copytree(PYDICOM_TEST_FILES, folder / "test_files")
    shutil.copytree(PYDICOM_CHARSET_FILES, folder / "charset_files")
    (folder / "notes.txt").write_text("not a DICOM file\n")
    outside = root.parent / f"{root.name}-outside"
    outside.mkdir()
    write_instance(outside / "outside.dcm", make_instance())
    (folder / "escape").symlink_to(outside)
    age_files(folder)
    valid = [
        bundled
        for bundled in bundled_files(folder / "test_files")
        + bundled_files(folder / "charset_files")
        if bundled.path.name not in TRUNCATED
    ]
    return folder, valid


def age_files(folder: Path, seconds: float = 60) -> None:
    """Date every file back, so that none looks still being written."""
    past = time.time() - seconds
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.utime(path, (past, past))


def index(folder: Path, data_dir: Path, index_url: str, root: Path, *options: str) -> ToolRun:
    args = ["index", str(folder), "--data-dir", str(data_dir), *options]
    if index_url:
        args += ["--index-url", index_url]
    return run_cli(args, data_dir.parent, env={"DICOMVAULT_INGEST_IMPORT_ROOTS": str(root)})


def summary(run: ToolRun) -> str:
    """The summary line of `dicomvault index`."""
    lines = [line for line in run.output.splitlines() if line.startswith("Task ")]
    assert lines, run.describe()
    return lines[-1]


# The outcomes of the report lines that `dicomvault index` prints.
REPORT_OUTCOMES = ("failed", "ignored", "pending", "pruned")


def report_lines(run: ToolRun, folder: Path) -> dict[str, tuple[str, str]]:
    """Map each file in the printed report, relative to `folder`, to (outcome, reason).

    Only lines of the form "  OUTCOME: PATH: REASON" count, so that other
    indented output on the same streams is not taken for a report line.
    """
    entries = {}
    for line in run.output.splitlines():
        outcome, _, rest = line.strip().partition(": ")
        if not line.startswith("  ") or outcome not in REPORT_OUTCOMES:
            continue
        path, _, reason = rest.partition(": ")
        entries[Path(path).relative_to(folder).as_posix()] = (outcome, reason)
    return entries


def found_instances(server: DicomvaultServer, study_uids: Iterable[str]) -> set[str]:
    """Query each study at IMAGE level and return the SOP Instance UIDs found."""
    uids = set()
    for study in study_uids:
        run = findscu(
            server.port,
            {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": study, "SOPInstanceUID": ""},
            server.ae_title,
        )
        assert run.status == SUCCESS, run.describe()
        uids |= {str(ds.SOPInstanceUID) for ds in run.responses}
    return uids


def all_studies(server: DicomvaultServer) -> set[str]:
    run = findscu(
        server.port, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""}, server.ae_title
    )
    assert run.status == SUCCESS, run.describe()
    return {str(ds.StudyInstanceUID) for ds in run.responses}


def start_on(
    start_server: ServerFactory, data_dir: Path, index_url: str, root: Path
) -> DicomvaultServer:
    return start_server(
        data_dir=data_dir,
        index_url=index_url,
        env={"DICOMVAULT_INGEST_IMPORT_ROOTS": str(root)},
    )


def test_corpus_found_and_rejects_reported(
    tmp_path: Path, index_url: str, start_server: ServerFactory
) -> None:
    root = tmp_path / "root"
    folder, valid = build_corpus(root)
    data_dir = tmp_path / "data"

    run = index(folder, data_dir, index_url, root)
    server = start_on(start_server, data_dir, index_url, root)
    studies = all_studies(server)
    found = found_instances(server, studies)

    assert run.returncode == 0, run.describe()
    assert found == {bundled.sop_instance_uid for bundled in valid}
    assert studies == {bundled.study_instance_uid for bundled in valid}
    report = report_lines(run, folder)
    valid_names = {bundled.path.relative_to(folder).as_posix() for bundled in valid}
    every_file = {
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and not path.is_relative_to(folder / "escape")
    }
    # Every file is either a valid instance or in the report, with a reason.
    assert set(report) | valid_names == every_file | {"escape"}
    assert not set(report) & valid_names
    assert all(reason for _, reason in report.values())
    for name, expected in EXPECTED_REASONS.items():
        assert report[name] == expected, name
    assert report["escape"][0] == "ignored"
    assert report["escape"][1].startswith("Symbolic link to ")
    counts = f"{len(every_file) + 1} files found, {len(valid_names)} indexed, 0 skipped"
    assert counts in summary(run), run.describe()


def test_rerun_touch_and_prune(tmp_path: Path, index_url: str, start_server: ServerFactory) -> None:
    root = tmp_path / "root"
    folder = root / "folder"
    datasets = [make_instance(StudyInstanceUID=make_uid("rerun", index_url)) for _ in range(3)]
    paths = [write_instance(folder / f"{n}.dcm", ds) for n, ds in enumerate(datasets)]
    (folder / "notes.txt").write_text("not DICOM")
    seen = time.time() - 60
    for path in folder.iterdir():
        os.utime(path, (seen, seen))
    data_dir = tmp_path / "data"

    first = index(folder, data_dir, index_url, root)
    again = index(folder, data_dir, index_url, root)
    os.utime(paths[1], (seen + 5, seen + 5))
    touched = index(folder, data_dir, index_url, root)
    paths[2].unlink()
    pruned = index(folder, data_dir, index_url, root, "--prune")
    server = start_on(start_server, data_dir, index_url, root)

    assert "4 files found, 3 indexed, 0 skipped (unchanged), 1 failed" in summary(first)
    assert "4 files found, 0 indexed, 4 skipped (unchanged), 0 failed" in summary(again)
    assert "4 files found, 1 indexed, 3 skipped (unchanged), 0 failed" in summary(touched)
    assert "1 pruned" in summary(pruned), pruned.describe()
    assert found_instances(server, {datasets[0].StudyInstanceUID}) == {
        datasets[0].SOPInstanceUID,
        datasets[1].SOPInstanceUID,
    }


def test_path_outside_roots_rejected(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "folder").mkdir(parents=True)
    other = tmp_path / "other"
    other.mkdir()

    outside = index(other, tmp_path / "data", "", root)
    dotted = index(root / "folder" / ".." / "..", tmp_path / "data", "", root)

    assert outside.returncode == 2
    assert outside.output.strip() == (
        f"Error: Cannot index {other} (resolved to {other}): it is not under an import root "
        f"({root}); add a root to [ingest] import_roots or choose a folder under one"
    )
    assert dotted.returncode == 2
    assert f"(resolved to {tmp_path})" in dotted.output


def test_get_in_place_study(tmp_path: Path, index_url: str, start_server: ServerFactory) -> None:
    root = tmp_path / "root"
    folder = root / "folder"
    study = make_uid("get", index_url)
    sources = [PYDICOM_TEST_FILES / name for name in ("CT_small.dcm", "MR_small.dcm")]
    folder.mkdir(parents=True)
    for number, source in enumerate(sources):
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID = study
        ds.SOPInstanceUID = make_uid("get", index_url, str(number))
        ds.save_as(folder / f"{number}.dcm", enforce_file_format=True)
    age_files(folder)
    data_dir = tmp_path / "data"
    index(folder, data_dir, index_url, root)
    server = start_on(start_server, data_dir, index_url, root)
    received = tmp_path / "received"
    received.mkdir()

    run = run_tool(
        [
            "getscu",
            "-S",
            "-aec",
            server.ae_title,
            "-od",
            str(received),
            LOOPBACK,
            str(server.port),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study}",
        ]
    )

    assert run.returncode == 0, run.describe()
    got = {pydicom.dcmread(path).SOPInstanceUID: path for path in received.iterdir()}
    assert set(got) == {make_uid("get", index_url, str(n)) for n in range(2)}
    for number, _source in enumerate(sources):
        sent = pydicom.dcmread(folder / f"{number}.dcm")
        back = pydicom.dcmread(got[make_uid("get", index_url, str(number))])
        assert back.PixelData == sent.PixelData
    # In-place files are never touched by retrieval.
    assert sorted(p.name for p in folder.iterdir()) == ["0.dcm", "1.dcm"]


def test_remove_in_place_and_imported(tmp_path: Path) -> None:
    root = tmp_path / "root"
    in_place = make_instance()
    imported = make_instance()
    write_instance(root / "in-place" / "a.dcm", in_place)
    write_instance(root / "import" / "b.dcm", imported)
    age_files(root)
    data_dir = tmp_path / "data"
    index(root / "in-place", data_dir, "", root)
    index(root / "import", data_dir, "", root, "--import")
    where = ["--data-dir", str(data_dir)]

    kept = run_cli(
        ["remove", "--study", in_place.StudyInstanceUID, "--delete-files", *where], tmp_path
    )
    deleted = run_cli(
        ["remove", "--instance", imported.SOPInstanceUID, "--delete-files", *where], tmp_path
    )
    missing = run_cli(["remove", "--series", "1.2.3.4", *where], tmp_path)
    both = run_cli(["remove", "--series", "1.2.3", "--study", "1.2", *where], tmp_path)

    assert kept.output.strip() == (
        f"Removed 1 instances of study {in_place.StudyInstanceUID} from the index; "
        "0 stored files deleted, 1 in-place files left where they are"
    )
    assert (root / "in-place" / "a.dcm").is_file()
    assert deleted.returncode == 0, deleted.describe()
    assert "1 stored files deleted" in deleted.output
    assert list((data_dir / "storage").rglob("*.dcm")) == []
    assert (root / "import" / "b.dcm").is_file()
    assert (missing.returncode, missing.output.strip()) == (
        1,
        "Error: No series with UID 1.2.3.4 is indexed",
    )
    assert both.returncode == 2
    assert both.output.strip() == "Error: Give exactly one of --study, --series and --instance"


def test_http_api_through_serve(
    tmp_path: Path, index_url: str, start_server: ServerFactory
) -> None:
    root = tmp_path / "root"
    folder = root / "folder"
    ds = make_instance()
    write_instance(folder / "a.dcm", ds)
    age_files(folder)
    server = start_server(index_url=index_url, env={"DICOMVAULT_INGEST_IMPORT_ROOTS": str(root)})

    with server.admin_client(TIMEOUT_SECONDS) as client:
        started = client.post("/api/tasks", json={"path": str(folder), "mode": "import"})
        rejected = client.post("/api/tasks", json={"path": str(tmp_path)})
        task_id = started.json()["id"]
        assert wait_until(
            lambda: client.get(f"/api/tasks/{task_id}").json()["status"] == "completed",
            TIMEOUT_SECONDS,
        ), server.describe()
        listed = client.get("/api/tasks").json()

    assert started.status_code == 202, started.text
    assert rejected.status_code == 403
    assert rejected.json()["detail"].startswith(f"Cannot index {tmp_path} ")
    assert listed[0]["id"] == task_id
    assert listed[0]["progress"]["indexed"] == 1
    assert found_instances(server, {ds.StudyInstanceUID}) == {ds.SOPInstanceUID}
