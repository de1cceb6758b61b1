"""Bulk indexing rate: `dicomvault index` beside a dcmread loop and Orthanc's REST import.

Run it with ``bash bench/run_index_bench.sh`` (root), which starts it inside a
network namespace that has only a loopback interface, because Orthanc 1.10
listens on every interface. Without ``--orthanc`` it needs no namespace and
no root: ``.venv/bin/python bench/index_bench.py``.

Steps: generate ``--files`` small CT instances (16 x 16 pixels, about 60
header elements, 100 per study) once, and read them all so that every run
finds them in the page cache. Then, ``--runs`` times in turn:

- the floor: one process calling ``pydicom.dcmread(path, stop_before_pixels=True)``
  on every file and nothing else;
- ``dicomvault index FOLDER`` in place, with a new SQLite index each run;
- with ``--orthanc``, Orthanc 1.10 from Debian with new storage each run,
  each file sent with ``POST /instances`` over one keep-alive connection, the
  way Orthanc's ImportDicomFiles.py sample script imports files.

Last, it prints files per second (median and range) and the ratios.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

LOOPBACK = "127.0.0.1"
START_TIMEOUT_SECONDS = 60
FILES_PER_STUDY = 100
FILES_PER_SERIES = 50
DICOMVAULT = str(Path(sys.executable).parent / "dicomvault")


def write_corpus(folder: Path, count: int) -> list[Path]:
    """Write `count` small CT instances under `folder`, one subfolder per study."""
    rng = np.random.default_rng(0)
    paths = []
    study = series = ""
    for number in range(count):
        if number % FILES_PER_STUDY == 0:
            study = generate_uid()
        if number % FILES_PER_SERIES == 0:
            series = generate_uid()
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
        ds.StudyTime, ds.SeriesTime, ds.ContentTime = "101500", "101600", "101700.123"
        ds.AccessionNumber = f"ACC{number // FILES_PER_STUDY}"
        ds.Modality = "CT"
        ds.Manufacturer = "BENCH"
        ds.InstitutionName = "Bench Hospital"
        ds.ReferringPhysicianName = "Ref^Doc"
        ds.StudyDescription = "CT chest"
        ds.SeriesDescription = "axial 1 mm"
        ds.PatientName = f"BENCH^P{number // FILES_PER_STUDY}"
        ds.PatientID = f"P{number // FILES_PER_STUDY}"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.SliceThickness = "1.0"
        ds.KVP = "120"
        ds.BodyPartExamined = "CHEST"
        ds.ProtocolName = "chest"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.StudyID = "1"
        ds.SeriesNumber = 1 + (number % FILES_PER_STUDY) // FILES_PER_SERIES
        ds.InstanceNumber = number % FILES_PER_SERIES + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(number % FILES_PER_SERIES)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = generate_uid()
        ds.SliceLocation = float(number % FILES_PER_SERIES)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = 16
        ds.PixelSpacing = [0.5, 0.5]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        ds.PixelData = rng.integers(0, 4096, (16, 16), dtype=np.uint16).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"study{number // FILES_PER_STUDY:05d}" / f"{number:06d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def corpus(folder: Path, count: int) -> list[Path]:
    """Return the corpus files, writing them unless a complete corpus is there."""
    paths = sorted(folder.rglob("*.dcm"))
    if len(paths) != count:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"Writing {count} files to {folder}", flush=True)
        paths = write_corpus(folder, count)
    for path in paths:
        path.read_bytes()  # into the page cache, for every contender alike
    return paths


def time_dcmread(paths: list[Path]) -> float:
    """Return files per second of a one-process dcmread loop."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            pydicom.dcmread(path, stop_before_pixels=True)
    return len(paths) / (time.perf_counter() - start)


def time_dicomvault(folder: Path, count: int, work: Path, run: int) -> float:
    """Return files per second of `dicomvault index` in place on a new SQLite index."""
    data_dir = work / f"dicomvault-{run}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMVAULT_")}
    env["DICOMVAULT_INGEST_IMPORT_ROOTS"] = str(folder)
    start = time.perf_counter()
    completed = subprocess.run(
        [DICOMVAULT, "index", str(folder), "--data-dir", str(data_dir)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    expected = f"{count} files found, {count} indexed"
    if completed.returncode != 0 or expected not in completed.stdout:
        raise SystemExit(f"dicomvault index failed:\n{completed.stdout}\n{completed.stderr}")
    shutil.rmtree(data_dir)
    return count / seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def time_orthanc(paths: list[Path], work: Path, run: int) -> float:
    """Return files per second of REST uploads to a new Orthanc."""
    folder = work / f"orthanc-{run}"
    folder.mkdir()
    http_port = free_port()
    config = {
        "Name": "dicomvault-bench",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "DicomPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    with (folder / "orthanc.log").open("wb") as log:
        process = subprocess.Popen(
            ["Orthanc", str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for_port(http_port, process)
        connection = http.client.HTTPConnection(LOOPBACK, http_port, timeout=60)
        start = time.perf_counter()
        for path in paths:
            connection.request("POST", "/instances", body=path.read_bytes())
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise SystemExit(f"Orthanc rejected {path}: {response.status} {body[:200]!r}")
        seconds = time.perf_counter() - start
        connection.close()
    finally:
        process.terminate()
        process.wait(timeout=60)
    shutil.rmtree(folder)
    return len(paths) / seconds


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"Orthanc exited with code {process.returncode} while starting")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"Orthanc did not listen on {LOOPBACK}:{port} in {START_TIMEOUT_SECONDS} s")


def describe(rates: list[float]) -> str:
    return f"{statistics.median(rates):.0f} ({min(rates):.0f}-{max(rates):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000, help="number of files")
    parser.add_argument("--runs", type=int, default=3, help="runs of each contender")
    parser.add_argument("--orthanc", action="store_true", help="also time Orthanc (needs root)")
    parser.add_argument(
        "--corpus",
        type=Path,
        default=Path(tempfile.gettempdir()) / "dicomvault-index-bench",
        help="folder of the generated files, kept between runs",
    )
    args = parser.parse_args()
    if args.orthanc and shutil.which("Orthanc") is None:
        raise SystemExit("Orthanc not found; run 'bash tests/services.sh' as root first")

    folder = args.corpus / f"files-{args.files}"
    paths = corpus(folder, args.files)
    results: dict[str, list[float]] = {"dcmread": [], "dicomvault": [], "orthanc": []}
    with tempfile.TemporaryDirectory(prefix="dicomvault-index-bench-") as temp:
        work = Path(temp)
        for run in range(args.runs):
            results["dcmread"].append(time_dcmread(paths))
            results["dicomvault"].append(time_dicomvault(folder, args.files, work, run))
            if args.orthanc:
                results["orthanc"].append(time_orthanc(paths, work, run))
            print(
                f"run {run + 1}: "
                + ", ".join(
                    f"{name} {rates[-1]:.0f} files/s" for name, rates in results.items() if rates
                ),
                flush=True,
            )

    print(
        f"\n{args.files} files, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"pydicom {pydicom.__version__}"
    )
    print("| contender | files/s, median (min-max) |")
    print("|---|---|")
    for name, rates in results.items():
        if rates:
            print(f"| {name} | {describe(rates)} |")
    dv = statistics.median(results["dicomvault"])
    print(f"\ndicomvault / dcmread loop: {dv / statistics.median(results['dcmread']):.2f}")
    if results["orthanc"]:
        print(f"dicomvault / Orthanc: {dv / statistics.median(results['orthanc']):.2f}")


if __name__ == "__main__":
    main()
