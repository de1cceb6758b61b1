"""C-FIND latency of Orthanc and dicomvault on the same index.

Each server starts empty and receives the whole find corpus over four
parallel storescu associations. Then one pynetdicom SCU opens one
association and sends each query once to warm up and `repeats` more times,
timing each from the request to the final response.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from pydicom.dataset import Dataset

from bench.clients import (
    find_association,
    findscu,
    image_identifier,
    send_folders,
    split_into_folders,
    study_identifier,
)
from bench.corpus import Corpus, SeriesSummary
from bench.ingest import KIB_PER_MIB
from bench.report import Sample, Table, format_ratio
from bench.servers import Dicomvault, Orthanc, Server, ServerError

LOGGER = logging.getLogger(__name__)

PARALLEL_ASSOCIATIONS = 4
MILLISECONDS_PER_SECOND = 1000.0


@dataclasses.dataclass(frozen=True)
class Query:
    """One C-FIND request of the benchmark."""

    label: str
    identifier: Dataset


@dataclasses.dataclass
class QueryResult:
    """Latencies and client CPU times in ms, and the last response's matches and status."""

    latencies_ms: list[float]
    client_cpu_ms: list[float]
    findscu_ms: list[float]
    matches: int
    status: int


@dataclasses.dataclass
class ServerFindResult:
    """The measurements of one server: index build rate and memory, and each query's result."""

    build_rate: float
    peak_memory_mib: float | None
    queries: dict[str, QueryResult]


def build_queries(corpus: Corpus) -> list[Query]:
    """Choose the queries from the corpus: a name wildcard, a year, a patient and a series.

    The patient and the series are taken from the middle of the corpus, the
    series being the first there with the corpus's full instances per series.
    """
    middle = corpus.series[len(corpus.series) // 2 :] + corpus.series
    series = _full_series(middle, corpus.spec.instances_per_series)
    year = series.study_date[:4]
    return [
        Query("STUDY, PatientName=A*", study_identifier(PatientName="A*")),
        Query(
            f"STUDY, StudyDate={year}0101-{year}1231",
            study_identifier(StudyDate=f"{year}0101-{year}1231"),
        ),
        Query(
            f"STUDY, PatientID={series.patient_id}",
            study_identifier(PatientID=series.patient_id),
        ),
        Query(
            f"IMAGE, one series ({series.modality})",
            image_identifier(series.study_instance_uid, series.series_instance_uid),
        ),
    ]


def _full_series(candidates: list[SeriesSummary], instances: int) -> SeriesSummary:
    for series in candidates:
        if series.instances == instances:
            return series
    return max(candidates, key=lambda series: series.instances)


def measure_server(
    server: Server, folders: list[Path], expected: int, queries: list[Query], repeats: int
) -> ServerFindResult:
    """Fill a fresh server with the corpus, then time every query on one association.

    Raises
    ------
    ServerError
        If the server stored a number of instances other than `expected`, or
        a query ended with a status other than Success.
    """
    try:
        server.start()
        seconds = send_folders(server.port, server.ae_title, folders, nodelay=True)
        stored = server.count_instances()
        if stored != expected:
            raise ServerError(
                f"{server.name} stored {stored} of {expected} instances.\n{server.log_tail()}"
            )
        LOGGER.info("find index on %s: %d instances, %.0f/s", server.name, stored, stored / seconds)
        results = {query.label: _time_query(server, query, repeats) for query in queries}
    finally:
        server.stop()
    memory = None if server.peak_memory_kib is None else server.peak_memory_kib / KIB_PER_MIB
    return ServerFindResult(expected / seconds, memory, results)


def _time_query(server: Server, query: Query, repeats: int) -> QueryResult:
    latencies = []
    cpu_times = []
    with find_association(server.port, server.ae_title) as client:
        answer = client.find(query.identifier)
        for _ in range(repeats):
            answer = client.find(query.identifier)
            latencies.append(answer.seconds * MILLISECONDS_PER_SECOND)
            cpu_times.append(answer.client_cpu_seconds * MILLISECONDS_PER_SECOND)
    if answer.status != 0x0000:
        raise ServerError(f"{server.name}: {query.label} ended with status 0x{answer.status:04X}")

    findscu_times = []
    for _ in range(repeats):
        seconds, matches = findscu(server.port, server.ae_title, query.identifier)
        if matches != len(answer.matches):
            raise ServerError(
                f"{server.name}: {query.label} returned {matches} matches to findscu "
                f"and {len(answer.matches)} to pynetdicom"
            )
        findscu_times.append(seconds * MILLISECONDS_PER_SECOND)
    return QueryResult(latencies, cpu_times, findscu_times, len(answer.matches), answer.status)


def _median(values: list[float]) -> str:
    return f"{Sample(tuple(values)).median:.1f}"


def run_find(work: Path, corpus: Corpus, repeats: int) -> dict[str, ServerFindResult]:
    """Measure Orthanc, then dicomvault, each on its own copy of the corpus."""
    folders = split_into_folders(corpus.files(), work / "split", PARALLEL_ASSOCIATIONS)
    queries = build_queries(corpus)
    results = {}
    for server in (Orthanc(work / "orthanc"), Dicomvault(work / "dicomvault")):
        results[server.name] = measure_server(server, folders, corpus.instances, queries, repeats)
        shutil.rmtree(server.workdir, ignore_errors=True)
    return results


def find_tables(results: dict[str, ServerFindResult], corpus: Corpus, repeats: int) -> list[Table]:
    """Build the latency table and the index build table."""
    orthanc, vault = results["Orthanc"], results["dicomvault"]
    pixels = (
        "16 x 16 pixels" if corpus.spec.small_pixels else f"{corpus.mean_instance_kb:.0f} kB mean"
    )
    latency = Table(
        f"C-FIND latency on {corpus.instances} instances, ms, "
        f"median (min-max) of {repeats} queries",
        [
            "query",
            "matches (Orthanc, dicomvault)",
            "Orthanc ms",
            "dicomvault ms",
            "dicomvault / Orthanc",
            "findscu ms (Orthanc, dicomvault)",
            "client CPU ms (Orthanc, dicomvault)",
        ],
        notes=[
            f"Index built by storescu over {PARALLEL_ASSOCIATIONS} parallel associations "
            f"({corpus.instances} instances in {len(corpus.series)} series, {pixels}), "
            "the same way for both servers.",
            "Orthanc ms, dicomvault ms: one pynetdicom SCU with TCP_NODELAY; each query is sent "
            "on its own association, once to warm up, then timed from the request to the final "
            "response.",
            "client CPU ms: median CPU time of the benchmark process (all threads) per timed "
            "query; close to the latency, it means the pynetdicom client limits the measurement.",
            "findscu ms: median wall time of a whole DCMTK findscu process per query (start, "
            "association, query, release), a client that costs less per match.",
        ],
    )
    for label, orthanc_query in orthanc.queries.items():
        vault_query = vault.queries[label]
        orthanc_ms = Sample(tuple(orthanc_query.latencies_ms))
        vault_ms = Sample(tuple(vault_query.latencies_ms))
        latency.rows.append(
            [
                label,
                f"{orthanc_query.matches}, {vault_query.matches}",
                orthanc_ms.format(1),
                vault_ms.format(1),
                format_ratio(vault_ms, orthanc_ms),
                f"{_median(orthanc_query.findscu_ms)}, {_median(vault_query.findscu_ms)}",
                f"{_median(orthanc_query.client_cpu_ms)}, {_median(vault_query.client_cpu_ms)}",
            ]
        )
        if orthanc_query.matches != vault_query.matches:
            latency.notes.append(
                f"{label}: the servers returned different numbers of matches "
                f"(Orthanc {orthanc_query.matches}, dicomvault {vault_query.matches})."
            )

    build = Table(
        f"Building the C-FIND index ({corpus.instances} instances, "
        f"{PARALLEL_ASSOCIATIONS} associations), one run",
        ["server", "instances/s", "peak memory MiB"],
    )
    for name, result in results.items():
        memory = "-" if result.peak_memory_mib is None else f"{result.peak_memory_mib:.0f}"
        build.rows.append([name, f"{result.build_rate:.0f}", memory])
    return [latency, build]
