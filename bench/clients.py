"""The clients of the benchmarks: storescu processes and a pynetdicom C-FIND SCU.

Every server is driven by the same client code, so differences in the
figures come from the servers.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from bench.loopback import LOOPBACK, process_environment

CALLING_AE = "BENCHSCU"
# Bounds of every client run, so that a stalled server cannot hang the benchmark.
STORESCU_TIMEOUT_SECONDS = 3600.0
ACSE_TIMEOUT_SECONDS = 30
DIMSE_TIMEOUT_SECONDS = 120
PENDING_STATUSES = (0xFF00, 0xFF01)


class ClientError(RuntimeError):
    """A client failed: storescu exited non-zero, or a C-FIND failed."""


def split_into_folders(files: Sequence[Path], folder: Path, parts: int) -> list[Path]:
    """Hard-link `files` into `parts` sub-folders of `folder` in contiguous chunks.

    storescu takes one folder per process (``+sd``) instead of a file list,
    which for 100,000 files would not fit on a command line. Hard links cost
    no copy; `folder` must be on the same file system as the files.
    """
    folders = []
    chunk = -(-len(files) // parts)
    for part in range(parts):
        part_folder = folder / f"part-{part}"
        part_folder.mkdir(parents=True)
        for number, path in enumerate(files[part * chunk : (part + 1) * chunk]):
            os.link(path, part_folder / f"{number:07d}.dcm")
        folders.append(part_folder)
    return folders


def send_folders(
    port: int,
    called_ae: str,
    folders: Sequence[Path],
    nodelay: bool,
    proposal_options: Sequence[str] = (),
) -> float:
    """Send each folder with its own storescu process, all at once; return the seconds taken.

    One storescu process means one association. The time runs from the
    start of the first process to the exit of the last, and includes
    storescu reading the headers of its files before it associates.

    storescu 3.6.7 exits with 0 even when the server returns a failure
    status, so the caller checks the number of instances stored.

    Raises
    ------
    ClientError
        If a storescu process exits with a non-zero code or runs longer than
        STORESCU_TIMEOUT_SECONDS.
    """
    env = process_environment(nodelay=nodelay)
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [
                "storescu",
                "-aet",
                CALLING_AE,
                "-aec",
                called_ae,
                "--no-halt",
                "-R",
                *proposal_options,
                "+sd",
                "+r",
                LOOPBACK,
                str(port),
                str(folder),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        for folder in folders
    ]
    outputs = [_wait(process, started) for process in processes]
    elapsed = time.perf_counter() - started
    failed = [
        output for process, output in zip(processes, outputs, strict=True) if process.returncode
    ]
    if failed:
        raise ClientError(f"storescu to {called_ae} failed:\n{failed[0][-3000:]}")
    return elapsed


def _wait(process: subprocess.Popen[bytes], started: float) -> str:
    remaining = max(STORESCU_TIMEOUT_SECONDS - (time.perf_counter() - started), 1.0)
    try:
        output, _ = process.communicate(timeout=remaining)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise ClientError(
            f"storescu ran longer than {STORESCU_TIMEOUT_SECONDS:.0f} s and was killed"
        ) from None
    return output.decode("utf-8", errors="replace")


@dataclasses.dataclass
class FindAnswer:
    """The outcome of one C-FIND: the final status, the matches and the seconds it took.

    ``client_cpu_seconds`` is the CPU time of this whole process (every
    thread) during the C-FIND. When it comes close to ``seconds``, the
    client, not the server, limits the latency.
    """

    status: int
    matches: list[Dataset]
    seconds: float
    client_cpu_seconds: float


class FindClient:
    """A Study Root C-FIND SCU on one open association."""

    def __init__(self, assoc: Any) -> None:
        self.assoc = assoc

    def find(self, identifier: Dataset) -> FindAnswer:
        """Send one C-FIND and collect every pending response.

        Raises
        ------
        ClientError
            If the association ends before the final response.
        """
        started = time.perf_counter()
        cpu_started = time.process_time()
        matches = []
        status = None
        for rsp_status, rsp_identifier in self.assoc.send_c_find(
            identifier, StudyRootQueryRetrieveInformationModelFind
        ):
            if "Status" not in (rsp_status or Dataset()):
                raise ClientError(
                    "C-FIND got no response: the association was aborted or timed out"
                )
            status = int(rsp_status.Status)
            if status in PENDING_STATUSES:
                matches.append(rsp_identifier)
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        if status is None:
            raise ClientError("C-FIND got no final response")
        return FindAnswer(status, matches, seconds, cpu_seconds)


@contextmanager
def find_association(port: int, called_ae: str) -> Iterator[FindClient]:
    """Open a Study Root C-FIND association to 127.0.0.1:`port`, released at the end.

    Raises
    ------
    ClientError
        If the association is not accepted.
    """
    ae = AE(ae_title=CALLING_AE)
    ae.acse_timeout = ACSE_TIMEOUT_SECONDS
    ae.dimse_timeout = DIMSE_TIMEOUT_SECONDS
    ae.network_timeout = DIMSE_TIMEOUT_SECONDS
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(LOOPBACK, port, ae_title=called_ae)
    if not assoc.is_established:
        raise ClientError(f"{called_ae} @ {LOOPBACK}:{port} did not accept a C-FIND association")
    # pynetdicom leaves Nagle's algorithm on. A C-FIND request is two
    # writes (command, then identifier), and with Nagle on the second one
    # waits for the server's delayed acknowledgement, about 40 ms on Linux.
    _disable_nagle(assoc)
    try:
        yield FindClient(assoc)
    finally:
        if assoc.is_established:
            assoc.release()


def _disable_nagle(assoc: Any) -> None:
    transport = assoc.dul.socket
    if transport is None or transport.socket is None:
        raise ClientError("the association has no socket to set TCP_NODELAY on")
    transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def study_identifier(**keys: str) -> Dataset:
    """Build a STUDY level identifier with the matching `keys` and the usual return keys."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in (
        "PatientName",
        "PatientID",
        "StudyDate",
        "StudyInstanceUID",
        "AccessionNumber",
        "StudyDescription",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
    ):
        setattr(ds, keyword, keys.pop(keyword, ""))
    if keys:
        raise ValueError(f"unexpected STUDY level keys: {', '.join(keys)}")
    return ds


def image_identifier(study_instance_uid: str, series_instance_uid: str) -> Dataset:
    """Build an IMAGE level identifier for every instance of one series."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = study_instance_uid
    ds.SeriesInstanceUID = series_instance_uid
    ds.SOPInstanceUID = ""
    ds.SOPClassUID = ""
    ds.InstanceNumber = ""
    return ds


def findscu(port: int, called_ae: str, identifier: Dataset) -> tuple[float, int]:
    """Send one Study Root C-FIND with DCMTK's findscu; return its seconds and matches.

    The time covers the whole findscu process: start, association, query
    and release. It runs with TCP_NODELAY=1, like the other DCMTK clients.

    Raises
    ------
    ClientError
        If findscu exits non-zero or prints no final Success response.
    """
    keys = []
    for element in identifier:
        value = str(element.value) if element.value not in (None, "") else ""
        keys += ["-k", f"{element.keyword}={value}" if value else element.keyword]
    started = time.perf_counter()
    completed = subprocess.run(
        ["findscu", "-S", "-v", "-aet", CALLING_AE, "-aec", called_ae, *keys, LOOPBACK, str(port)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=process_environment(nodelay=True),
        timeout=DIMSE_TIMEOUT_SECONDS,
        check=False,
    )
    seconds = time.perf_counter() - started
    # The dumps hold names in each study's own character set, not always UTF-8.
    output = (completed.stdout + completed.stderr).decode("utf-8", errors="replace")
    # findscu -v prints "Find Response: N (Pending)" per match, then the final status.
    if completed.returncode != 0 or "Received Final Find Response (Success)" not in output:
        raise ClientError(
            f"findscu to {called_ae} failed ({completed.returncode}):\n{output[-3000:]}"
        )
    return seconds, output.count("(Pending)")


def count_instances(port: int, called_ae: str) -> int:
    """Return the instances a server stores: the sum of NumberOfStudyRelatedInstances.

    Raises
    ------
    ClientError
        If the C-FIND fails, or a study has no NumberOfStudyRelatedInstances.
    """
    with find_association(port, called_ae) as client:
        answer = client.find(study_identifier())
    if answer.status != 0x0000:
        raise ClientError(f"C-FIND for the instance count ended with status 0x{answer.status:04X}")
    total = 0
    for match in answer.matches:
        value = match.get("NumberOfStudyRelatedInstances")
        if value in (None, ""):
            raise ClientError(f"{called_ae} returned a study without NumberOfStudyRelatedInstances")
        total += int(value)
    return total
