"""C-STORE ingest: instances per second and peak memory of storescp, Orthanc and dicomvault.

Every run starts each server empty, sends the corpus with storescu, checks
that every instance was stored, reads the server's peak resident memory
(VmHWM) and stops it. Three cases are measured: one association and four
parallel associations with TCP_NODELAY=1 in storescu's environment, and one
association without it, when storescu leaves Nagle's algorithm on.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from bench.clients import send_folders, split_into_folders
from bench.corpus import COMPRESSIONS, STORESCU_PROPOSAL_OPTIONS, Corpus
from bench.report import Sample, Table, format_ratio
from bench.servers import Dicomvault, Orthanc, Server, ServerError, Storescp

LOGGER = logging.getLogger(__name__)

SERVER_NAMES = ("storescp", "Orthanc", "dicomvault")
# The 300 MB peak memory target is in MB of 2**20 bytes.
KIB_PER_MIB = 1024


@dataclasses.dataclass(frozen=True)
class IngestCase:
    """A storescu configuration: the number of parallel associations, and TCP_NODELAY."""

    label: str
    associations: int
    nodelay: bool


CASES = (
    IngestCase("1 association, TCP_NODELAY=1", 1, True),
    IngestCase("4 associations, TCP_NODELAY=1", 4, True),
    IngestCase("1 association, no TCP_NODELAY", 1, False),
)


@dataclasses.dataclass
class IngestResults:
    """Instances per second and peak memory in MiB, by case label and server name."""

    rates: dict[tuple[str, str], list[float]] = dataclasses.field(default_factory=dict)
    memory: dict[tuple[str, str], list[float]] = dataclasses.field(default_factory=dict)
    counts: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)

    def rate(self, case: str, server: str) -> Sample | None:
        """Return the instances per second of `server` in `case`, or None if not measured."""
        values = self.rates.get((case, server))
        return Sample(tuple(values)) if values else None

    def peak_memory(self, case: str, server: str) -> Sample | None:
        """Return the peak memory of `server` in `case` in MiB, or None if not measured."""
        values = self.memory.get((case, server))
        return Sample(tuple(values)) if values else None


def make_server(name: str, workdir: Path, associations: int) -> Server:
    """Create one of the servers by name, ready to start in `workdir`."""
    if name == "storescp":
        return Storescp(workdir, fork=associations > 1)
    if name == "Orthanc":
        return Orthanc(workdir)
    return Dicomvault(workdir)


def measure_once(
    name: str,
    workdir: Path,
    folders: list[Path],
    case: IngestCase,
    expected: int,
    proposal_options: list[str],
) -> tuple[float, float | None]:
    """Send `folders` to a fresh server once; return instances per second and peak MiB.

    The peak memory is None for storescp with ``--fork``, whose children
    receive the instances.

    Raises
    ------
    ServerError
        If the server stored a number of instances other than `expected`.
    """
    server = make_server(name, workdir, case.associations)
    try:
        server.start()
        seconds = send_folders(
            server.port, server.ae_title, folders, case.nodelay, proposal_options
        )
        stored = server.count_instances()
    finally:
        server.stop()
    if stored != expected:
        raise ServerError(
            f"{name} stored {stored} of {expected} instances ({case.label}).\n{server.log_tail()}"
        )
    shutil.rmtree(workdir, ignore_errors=True)

    memory = None
    if server.peak_memory_kib is not None and not (name == "storescp" and case.associations > 1):
        memory = server.peak_memory_kib / KIB_PER_MIB
    return expected / seconds, memory


def run_ingest(work: Path, corpus: Corpus, runs: int, nagle_instances: int) -> IngestResults:
    """Measure every case on every server `runs` times, servers in turn within a run.

    Without TCP_NODELAY, storescp and Orthanc receive only the first
    `nagle_instances` files, because each of their C-STOREs then stalls
    for tens of milliseconds. dicomvault receives the whole corpus in every case.
    """
    files = corpus.files()
    compression = corpus.spec.compression
    proposal = [STORESCU_PROPOSAL_OPTIONS[compression]] if compression else []
    split_cache: dict[tuple[int, int], list[Path]] = {}
    results = IngestResults()

    for run in range(1, runs + 1):
        for case in CASES:
            for name in SERVER_NAMES:
                count = len(files)
                if not case.nodelay and name != "dicomvault":
                    count = min(nagle_instances, len(files))
                key = (count, case.associations)
                if key not in split_cache:
                    split_cache[key] = split_into_folders(
                        files[:count],
                        work / f"split-{count}-{case.associations}",
                        case.associations,
                    )
                rate, memory = measure_once(
                    name,
                    work / f"run-{run}-{name}",
                    split_cache[key],
                    case,
                    count,
                    proposal,
                )
                LOGGER.info(
                    "ingest run %d, %s, %s: %d instances, %.0f/s",
                    run,
                    case.label,
                    name,
                    count,
                    rate,
                )
                results.rates.setdefault((case.label, name), []).append(rate)
                if memory is not None:
                    results.memory.setdefault((case.label, name), []).append(memory)
                results.counts[(case.label, name)] = count
    return results


def ingest_tables(results: IngestResults, corpus: Corpus, runs: int) -> list[Table]:
    """Build the instances-per-second and the peak-memory tables."""
    syntax = COMPRESSIONS[corpus.spec.compression][0] if corpus.spec.compression else None
    compression = syntax.name if syntax else "uncompressed, Explicit VR Little Endian"
    rates = Table(
        f"C-STORE ingest, instances/s, median (min-max) of {runs} runs",
        [
            "storescu",
            *SERVER_NAMES,
            "dicomvault / storescp",
            "dicomvault / Orthanc",
        ],
        notes=[
            f"{corpus.instances} instances, mean {corpus.mean_instance_kb:.0f} kB "
            f"({compression}), sent by DCMTK storescu; every server started empty for each run, "
            "and the stored count checked after each run.",
            "storescp and Orthanc run with TCP_NODELAY=1 in their own environment; "
            "dicomvault sets TCP_NODELAY on its sockets itself.",
        ],
    )
    for case in CASES:
        samples = {name: results.rate(case.label, name) for name in SERVER_NAMES}
        rates.rows.append(
            [
                case.label,
                *(_with_count(samples[name], results, case, name) for name in SERVER_NAMES),
                format_ratio(samples["dicomvault"], samples["storescp"]),
                format_ratio(samples["dicomvault"], samples["Orthanc"]),
            ]
        )
    nagle = results.rate(CASES[2].label, "dicomvault")
    nodelay = results.rate(CASES[0].label, "dicomvault")
    rates.notes.append(
        f"dicomvault without / with TCP_NODELAY on the client, one association: "
        f"{format_ratio(nagle, nodelay)}."
    )

    memory = Table(
        f"Peak resident memory during ingest (VmHWM), MiB, median (min-max) of {runs} runs",
        ["storescu", *SERVER_NAMES],
        notes=["storescp with --fork (four associations) receives in child processes: not shown."],
    )
    for case in CASES:
        memory.rows.append(
            [
                case.label,
                *(_format(results.peak_memory(case.label, name)) for name in SERVER_NAMES),
            ]
        )
    return [rates, memory]


def _format(sample: Sample | None) -> str:
    return "-" if sample is None else sample.format()


def _with_count(sample: Sample | None, results: IngestResults, case: IngestCase, name: str) -> str:
    text = _format(sample)
    count = results.counts.get((case.label, name))
    if sample is not None and not case.nodelay and name != "dicomvault":
        text += f" [{count} instances]"
    return text
