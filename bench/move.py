"""C-MOVE throughput: dicomvault beside Orthanc, both sending one study to DCMTK's storescp.

Both servers receive the same study with storescu. Then movescu moves it
to storescp from each server in turn, `runs` times, and every move must
deliver every instance.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import time
from pathlib import Path

from bench.clients import CALLING_AE, send_folders, split_into_folders
from bench.corpus import Corpus
from bench.loopback import LOOPBACK, process_environment
from bench.report import Sample, Table, format_ratio
from bench.servers import Dicomvault, Orthanc, Server, ServerError, Storescp

LOGGER = logging.getLogger(__name__)

MOVESCU_TIMEOUT_SECONDS = 1800.0


@dataclasses.dataclass
class MoveResults:
    """Instances per second of each server's moves, by server name."""

    rates: dict[str, list[float]] = dataclasses.field(default_factory=dict)


def move_seconds(
    server: Server, destination: Storescp, study_instance_uid: str, expected: int
) -> float:
    """Time one movescu of the study to `destination`; check that every instance arrived.

    Raises
    ------
    ServerError
        If movescu fails or storescp received a number of instances other than `expected`.
    """
    destination.clear()
    started = time.perf_counter()
    completed = subprocess.run(
        [
            "movescu",
            "-S",
            "-aet",
            CALLING_AE,
            "-aec",
            server.ae_title,
            "-aem",
            destination.ae_title,
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study_instance_uid}",
            LOOPBACK,
            str(server.port),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=process_environment(nodelay=True),
        timeout=MOVESCU_TIMEOUT_SECONDS,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise ServerError(
            f"movescu from {server.name} failed ({completed.returncode}):\n"
            f"{completed.stdout}{completed.stderr}"
        )
    arrived = destination.count_instances()
    if arrived != expected:
        raise ServerError(f"{server.name}: {arrived} of {expected} instances arrived at storescp")
    return elapsed


def run_move(work: Path, corpus: Corpus, runs: int) -> MoveResults:
    """Store the one-study corpus in both servers, then time `runs` moves from each in turn."""
    if len({series.study_instance_uid for series in corpus.series}) != 1:
        raise ValueError("the C-MOVE corpus must hold exactly one study")
    study_instance_uid = corpus.series[0].study_instance_uid
    folders = split_into_folders(corpus.files(), work / "split", 1)
    results = MoveResults()

    destination = Storescp(work / "storescp")
    nodes = {destination.ae_title: (LOOPBACK, destination.port)}
    servers: list[Server] = [
        Dicomvault(work / "dicomvault", nodes),
        Orthanc(work / "orthanc", nodes),
    ]
    try:
        destination.start()
        for server in servers:
            server.start()
            send_folders(server.port, server.ae_title, folders, nodelay=True)
            stored = server.count_instances()
            if stored != corpus.instances:
                raise ServerError(f"{server.name} stored {stored} of {corpus.instances} instances")

        for run in range(1, runs + 1):
            for server in servers:
                seconds = move_seconds(server, destination, study_instance_uid, corpus.instances)
                rate = corpus.instances / seconds
                LOGGER.info("move run %d from %s: %.0f/s", run, server.name, rate)
                results.rates.setdefault(server.name, []).append(rate)
    finally:
        for server in [*servers, destination]:
            server.stop()
    return results


def move_tables(results: MoveResults, corpus: Corpus, runs: int) -> list[Table]:
    """Build the C-MOVE table."""
    modality = corpus.series[0].modality
    size = "16 x 16" if corpus.spec.small_pixels else f"{corpus.mean_instance_kb:.0f} kB each"
    table = Table(
        f"C-MOVE to storescp, instances/s, median (min-max) of {runs} runs",
        ["server", "instances/s", "dicomvault / Orthanc"],
        notes=[
            f"One {corpus.instances}-instance {modality} study "
            f"({size}, Explicit VR Little Endian), "
            "moved by movescu to storescp (TCP_NODELAY=1), servers alternating; "
            "every move checked to deliver every instance."
        ],
    )
    vault = Sample(tuple(results.rates["dicomvault"]))
    orthanc = Sample(tuple(results.rates["Orthanc"]))
    table.rows.append(["dicomvault", vault.format(), format_ratio(vault, orthanc)])
    table.rows.append(["Orthanc", orthanc.format(), ""])
    return [table]
