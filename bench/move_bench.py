"""C-MOVE throughput: dicomvault beside Orthanc, both sending one study to DCMTK's storescp.

Run it with ``make bench-move`` (or ``bash bench/run_move_bench.sh``), which
starts it inside a network namespace of its own: Orthanc 1.10 listens on every
interface, so the namespace keeps all servers reachable only from inside.

Steps: generate a study of CT-sized instances (512 x 512, 16 bits, 512 KiB
each, or 256 x 256 with --small) and store it in both servers with storescu.
Then move it to storescp from each server in turn, ``--runs`` times. Last,
print instances per second (median and range) and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

LOOPBACK = "127.0.0.1"
STORESCP_AE = "STORESCP"
START_TIMEOUT_SECONDS = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with code {process.returncode} while starting")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{name} did not listen on {LOOPBACK}:{port} in {START_TIMEOUT_SECONDS} s")


def write_study(folder: Path, count: int, size: int) -> str:
    """Write `count` instances of one new study; return its Study Instance UID."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    study, series = generate_uid(), generate_uid()
    for number in range(count):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.PatientName = "BENCH^MOVE"
        ds.PatientID = "BENCH-MOVE"
        ds.StudyDate = "20260101"
        ds.Modality = "CT"
        ds.InstanceNumber = number + 1
        ds.Rows = ds.Columns = size
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(folder / f"{number:05d}.dcm", enforce_file_format=True)
    return str(study)


def run(args: list[str]) -> None:
    completed = subprocess.run(args, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(
            f"{args[0]} failed ({completed.returncode}):\n{completed.stdout}{completed.stderr}"
        )


def move_seconds(port: int, called_ae: str, study: str, received: Path, count: int) -> float:
    """Time one movescu of the study to storescp; check that every instance arrived."""
    shutil.rmtree(received, ignore_errors=True)
    received.mkdir()
    started = time.perf_counter()
    run(
        [
            "movescu",
            "-S",
            "-aec",
            called_ae,
            "-aem",
            STORESCP_AE,
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study}",
            LOOPBACK,
            str(port),
        ]
    )
    elapsed = time.perf_counter() - started
    arrived = len(list(received.iterdir()))
    if arrived != count:
        raise SystemExit(f"{called_ae}: {arrived} of {count} instances arrived at storescp")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="256 x 256 images")
    options = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dicomvault-bench-move-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        corpus = work / "corpus"
        study = write_study(corpus, options.instances, 256 if options.small else 512)
        files = sorted(str(p) for p in corpus.iterdir())

        received = work / "received"
        received.mkdir()
        scp_port = free_port()
        # DCMTK 3.6.7 leaves Nagle's algorithm on unless TCP_NODELAY is set.
        # That delays each C-STORE response by tens of milliseconds and would
        # make storescp, not the servers, the measured limit.
        storescp = subprocess.Popen(
            ["storescp", "-aet", STORESCP_AE, "-od", str(received), str(scp_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        processes.append(storescp)
        wait_for_port(scp_port, storescp, "storescp")

        vault_port = free_port()
        vault_data = work / "dicomvault"
        run(
            [
                sys.executable,
                "-m",
                "dicomvault",
                "node",
                "add",
                STORESCP_AE,
                "--host",
                LOOPBACK,
                "--port",
                str(scp_port),
                "--data-dir",
                str(vault_data),
            ]
        )
        vault = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dicomvault",
                "serve",
                "--data-dir",
                str(vault_data),
                "--port",
                str(vault_port),
                "--log-format",
                "text",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(vault)
        wait_for_port(vault_port, vault, "dicomvault")

        orthanc_dir = work / "orthanc"
        orthanc_dir.mkdir()
        orthanc_port, orthanc_http = free_port(), free_port()
        (orthanc_dir / "orthanc.json").write_text(
            json.dumps(
                {
                    "StorageDirectory": str(orthanc_dir / "storage"),
                    "IndexDirectory": str(orthanc_dir / "index"),
                    "HttpPort": orthanc_http,
                    "DicomPort": orthanc_port,
                    "DicomAet": "ORTHANC",
                    "RemoteAccessAllowed": False,
                    "DicomCheckCalledAet": False,
                    # movescu is not a registered modality of Orthanc.
                    "DicomAlwaysAllowMove": True,
                    "DicomModalities": {"storescp": [STORESCP_AE, LOOPBACK, scp_port]},
                }
            ),
            encoding="utf-8",
        )
        orthanc = subprocess.Popen(
            ["Orthanc", str(orthanc_dir / "orthanc.json")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(orthanc)
        wait_for_port(orthanc_port, orthanc, "Orthanc")

        for port, ae in ((vault_port, "DICOMVAULT"), (orthanc_port, "ORTHANC")):
            run(["storescu", "-aec", ae, LOOPBACK, str(port), *files])

        rates: dict[str, list[float]] = {"dicomvault": [], "Orthanc": []}
        for _ in range(options.runs):
            for name, port, ae in (
                ("dicomvault", vault_port, "DICOMVAULT"),
                ("Orthanc", orthanc_port, "ORTHANC"),
            ):
                seconds = move_seconds(port, ae, study, received, options.instances)
                rates[name].append(options.instances / seconds)

        size = "256 x 256" if options.small else "512 x 512"
        print(
            f"C-MOVE of one {options.instances}-instance study ({size}, 16-bit, explicit VR "
            f"little endian) to storescp, {options.runs} runs, alternating servers"
        )
        print("| server | instances/s (median) | min | max |")
        print("|---|---|---|---|")
        for name, values in rates.items():
            print(
                f"| {name} | {statistics.median(values):.0f} | {min(values):.0f} "
                f"| {max(values):.0f} |"
            )
        ratio = statistics.median(rates["dicomvault"]) / statistics.median(rates["Orthanc"])
        print(f"dicomvault / Orthanc: {ratio:.2f}")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
