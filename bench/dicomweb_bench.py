"""DICOMweb benchmark: QIDO-RS study search latency and WADO-RS study retrieve throughput.

Run it with ``make bench-dicomweb`` or ``bash bench/run_dicomweb_bench.sh
[options]`` (root), which starts it inside a network namespace that has only
a loopback interface, because Orthanc 1.10 listens on every interface.

Steps:

1. Generate the corpus once: ``--studies`` MR studies of four series, whose
   sizes cycle through ``--study-sizes`` instances (by default 100 to 500,
   128 KiB each), with bench/corpus.py.
2. Start each server empty: Orthanc 1.10 with the DICOMweb plugin 1.7 of
   Debian's orthanc-dicomweb, and ``dicomvault serve``. Load the same files
   into each, with storescu over four associations (``--load storescu``) or
   with STOW-RS requests of ``--stow-batch`` instances (``--load stow``), and
   check the instance count with C-FIND.
3. QIDO-RS: on one keep-alive connection per server, send each study query
   once to warm up and ``--repeats`` more times, the servers taking turns
   request by request. Report the median latency from request to the last
   byte of the response, and the number of matches.
4. WADO-RS: retrieve every study as multipart/related; type="application/dicom"
   with transfer-syntax=* (as stored), ``--retrieve-runs`` times, the servers
   taking turns study by study; report the bytes received per second and
   check the number of parts against the study's instances.

A server that does not serve a DICOMweb service (an HTTP 404 or 405 to its
probe request) gets "not served" in that table instead of figures, so the
benchmark also runs against a dicomvault that serves only STOW-RS.

The tables go to standard output as Markdown; progress goes to standard error.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import logging
import shutil
import sys
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from bench.clients import send_folders, split_into_folders
from bench.corpus import Corpus, CorpusSpec, SeriesSummary, write_corpus
from bench.loopback import LOOPBACK
from bench.report import Sample, Table, format_ratio, machine_lines, run_and_report
from bench.servers import ORTHANC_DICOMWEB_PLUGIN, Dicomvault, Orthanc, ServerError

LOGGER = logging.getLogger("bench.dicomweb")

# The servers with DICOMweb: each has ``http_port`` and ``DICOMWEB_ROOT``.
WebServer = Orthanc | Dicomvault

SERVER_NAMES = ("Orthanc", "dicomvault")
REQUIRED_TOOLS = ("storescu", "Orthanc")
SERIES_PER_STUDY = 4
PARALLEL_ASSOCIATIONS = 4
HTTP_TIMEOUT_SECONDS = 600.0
READ_SIZE = 1024 * 1024
BYTES_PER_MB = 1_000_000
MILLISECONDS_PER_SECOND = 1000.0
NOT_SERVED = "not served"
DICOM_JSON = "application/dicom+json"
ACCEPT_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
STOW_BOUNDARY = "dicomvault-bench-boundary"
STOW_CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={STOW_BOUNDARY}'


class BenchError(RuntimeError):
    """A request failed or returned something other than what the corpus holds."""


@dataclasses.dataclass(frozen=True)
class Scale:
    """Corpus size and repetitions of one run."""

    studies: int = 20
    study_sizes: tuple[int, ...] = (100, 200, 300, 400, 500)
    repeats: int = 50
    retrieve_runs: int = 3
    stow_batch: int = 50


TINY = Scale(studies=2, study_sizes=(8, 12), repeats=3, retrieve_runs=1, stow_batch=5)


@dataclasses.dataclass(frozen=True)
class Study:
    """One study of the corpus with its files."""

    study_instance_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    files: tuple[Path, ...]

    @property
    def size_bytes(self) -> int:
        """Total size of the study's files."""
        return sum(path.stat().st_size for path in self.files)


@dataclasses.dataclass(frozen=True)
class Query:
    """One QIDO-RS study search: a label for the table and the query string."""

    label: str
    query: str


@dataclasses.dataclass
class ServerResults:
    """The measurements of one server; None where it does not serve the service."""

    load_rate: float | None = None
    qido: dict[str, tuple[Sample, int]] | None = None
    retrieve_rates: list[float] | None = None
    retrieve_bytes: int = 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    default = Scale()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--servers",
        default=",".join(SERVER_NAMES),
        help=f"comma-separated servers, from {', '.join(SERVER_NAMES)} (default: both)",
    )
    parser.add_argument(
        "--studies", type=int, help=f"studies in the corpus (default {default.studies})"
    )
    parser.add_argument(
        "--study-sizes",
        help="comma-separated instance counts the study sizes cycle through, each a multiple "
        f"of {SERIES_PER_STUDY} (default {','.join(map(str, default.study_sizes))})",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help=f"timed requests of each QIDO-RS query (default {default.repeats})",
    )
    parser.add_argument(
        "--retrieve-runs",
        type=int,
        help=f"times every study is retrieved with WADO-RS (default {default.retrieve_runs})",
    )
    parser.add_argument(
        "--load",
        choices=("storescu", "stow"),
        default="storescu",
        help="how the corpus goes into the servers: C-STORE with storescu over "
        f"{PARALLEL_ASSOCIATIONS} associations, or STOW-RS (default storescu)",
    )
    parser.add_argument(
        "--stow-batch",
        type=int,
        help=f"instances per STOW-RS request with --load stow (default {default.stow_batch})",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="two small studies and few repeats: a smoke test"
    )
    parser.add_argument("--seed", type=int, default=1, help="corpus seed")
    parser.add_argument(
        "--workdir", type=Path, help="folder for the corpus and servers (default: a new one)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder at the end")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)

    args.server_names = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = set(args.server_names) - set(SERVER_NAMES)
    if unknown or not args.server_names:
        parser.error(f"--servers takes names from {', '.join(SERVER_NAMES)}, got {args.servers!r}")
    for name in ("studies", "repeats", "retrieve_runs", "stow_batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.study_sizes is not None:
        try:
            args.study_sizes = tuple(int(size) for size in args.study_sizes.split(","))
        except ValueError:
            parser.error(f"--study-sizes takes integers such as 100,200, got {args.study_sizes!r}")
        if any(size < SERIES_PER_STUDY or size % SERIES_PER_STUDY for size in args.study_sizes):
            parser.error(
                f"--study-sizes must be multiples of {SERIES_PER_STUDY}, got {args.study_sizes}"
            )
    return args


def scale_from(args: argparse.Namespace) -> Scale:
    """Combine the defaults, --tiny and the explicit options into one Scale."""
    scale = TINY if args.tiny else Scale()
    explicit = {
        name: getattr(args, name)
        for name in ("studies", "study_sizes", "repeats", "retrieve_runs", "stow_batch")
        if getattr(args, name) is not None
    }
    return dataclasses.replace(scale, **explicit)


def write_studies(scale: Scale, seed: int, folder: Path) -> list[Study]:
    """Write the corpus, one bench/corpus.py corpus per study size, and list its studies."""
    studies: list[Study] = []
    patients_written = 0
    for group, size in enumerate(scale.study_sizes):
        count = len(range(group, scale.studies, len(scale.study_sizes)))
        if count == 0:
            continue
        spec = CorpusSpec(
            patients=count,
            studies_per_patient=1,
            series_per_study=SERIES_PER_STUDY,
            instances_per_series=size // SERIES_PER_STUDY,
            # A seed per group, so that the groups' UIDs differ.
            seed=seed * 1000 + group,
            modalities=("MR",),
            # One patient per study: the same Patient ID in two groups would
            # merge two patients of different names.
            first_patient_number=patients_written + 1,
        )
        patients_written += count
        started = time.perf_counter()
        corpus = write_corpus(spec, folder / f"size-{size}")
        LOGGER.info(
            "corpus of %d studies of %d instances, mean %.0f kB, written in %.0f s",
            count,
            size,
            corpus.mean_instance_kb,
            time.perf_counter() - started,
        )
        studies += _studies_of(corpus)
    return studies


def _studies_of(corpus: Corpus) -> list[Study]:
    by_study: dict[str, list[SeriesSummary]] = {}
    for series in corpus.series:
        by_study.setdefault(series.study_instance_uid, []).append(series)
    files = corpus.files()
    studies = []
    for study_uid, series_list in by_study.items():
        first = series_list[0]
        # Files are under <PatientID>/<study>/<series>/, one patient per study here.
        study_files = tuple(
            path for path in files if path.relative_to(corpus.folder).parts[0] == first.patient_id
        )
        expected = sum(series.instances for series in series_list)
        if len(study_files) != expected:
            raise BenchError(f"study {study_uid} has {len(study_files)} files, expected {expected}")
        studies.append(
            Study(study_uid, first.patient_id, first.patient_name, first.study_date, study_files)
        )
    return studies


def build_queries(studies: Sequence[Study]) -> list[Query]:
    """Choose the study searches: all studies, a name wildcard, a patient, a year and a UID."""
    middle = studies[len(studies) // 2]
    latin = next(
        (study for study in studies if study.patient_name[:1].isascii()), middle
    ).patient_name
    year = middle.study_date[:4]
    return [
        Query("all studies", ""),
        Query(f"PatientName={latin[0]}*", f"PatientName={urllib.parse.quote(latin[0])}*"),
        Query("PatientID", f"PatientID={urllib.parse.quote(middle.patient_id)}"),
        Query(f"StudyDate={year}", f"StudyDate={year}0101-{year}1231"),
        Query("StudyInstanceUID", f"StudyInstanceUID={middle.study_instance_uid}"),
    ]


def make_server(name: str, workdir: Path) -> WebServer:
    """Create a server by name, with DICOMweb on."""
    if name == "Orthanc":
        return Orthanc(workdir, dicomweb=True)
    return Dicomvault(workdir)


# Loading


def load_with_storescu(server: WebServer, studies: Sequence[Study], work: Path) -> float:
    """Send every file with storescu over parallel associations; return instances per second."""
    files = [path for study in studies for path in study.files]
    folder = work / "split"
    if not folder.exists():
        split_into_folders(files, folder, PARALLEL_ASSOCIATIONS)
    folders = sorted(folder.iterdir())
    seconds = send_folders(server.port, server.ae_title, folders, nodelay=True)
    return len(files) / seconds


def load_with_stow(server: WebServer, studies: Sequence[Study], batch: int) -> float:
    """POST every file with STOW-RS, ``batch`` per request; return instances per second.

    Raises
    ------
    BenchError
        If a response status is not 200.
    """
    files = [path for study in studies for path in study.files]
    connection = http.client.HTTPConnection(
        LOOPBACK, server.http_port, timeout=HTTP_TIMEOUT_SECONDS
    )
    path = f"{server.DICOMWEB_ROOT}/studies"
    started = time.perf_counter()
    try:
        for start in range(0, len(files), batch):
            body = multipart_body(files[start : start + batch])
            connection.request("POST", path, body=body, headers=_stow_headers(len(body)))
            response = connection.getresponse()
            payload = response.read()
            if response.status != 200:
                raise BenchError(
                    f"STOW-RS to {server.name} returned status {response.status}: {payload[:500]!r}"
                )
    finally:
        connection.close()
    return len(files) / (time.perf_counter() - started)


def _stow_headers(length: int) -> dict[str, str]:
    return {
        "Content-Type": STOW_CONTENT_TYPE,
        "Content-Length": str(length),
        "Accept": DICOM_JSON,
    }


def multipart_body(paths: Sequence[Path]) -> bytes:
    """Join DICOM files into a multipart/related body with STOW_BOUNDARY."""
    chunks = []
    for path in paths:
        chunks.append(f"--{STOW_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        chunks.append(path.read_bytes())
        chunks.append(b"\r\n")
    chunks.append(f"--{STOW_BOUNDARY}--\r\n".encode())
    return b"".join(chunks)


# QIDO-RS


def serves(server: WebServer, path: str, accept: str) -> bool:
    """Return whether a GET of ``path`` is served: its response status is not 404 or 405.

    Raises
    ------
    BenchError
        If the response has another error status.
    """
    connection = http.client.HTTPConnection(
        LOOPBACK, server.http_port, timeout=HTTP_TIMEOUT_SECONDS
    )
    try:
        connection.request("GET", path, headers={"Accept": accept})
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status in (http.HTTPStatus.NOT_FOUND, http.HTTPStatus.METHOD_NOT_ALLOWED):
        return False
    if response.status >= 400:
        raise BenchError(
            f"GET {path} on {server.name} returned status {response.status}: {body[:300]!r}"
        )
    return True


def measure_qido(
    servers: Mapping[str, WebServer], queries: Sequence[Query], repeats: int
) -> dict[str, dict[str, tuple[Sample, int]]]:
    """Time each query ``repeats`` times per server after one warm-up each.

    The servers take turns request by request, the first server changing at
    every repeat, so that a burst of load from other work on the machine
    slows all of them alike. Returns, per server name, the latencies in ms
    and the matches of each query.

    Raises
    ------
    BenchError
        If a response is not status 200 with a JSON array.
    """
    connections = {
        name: http.client.HTTPConnection(LOOPBACK, server.http_port, timeout=HTTP_TIMEOUT_SECONDS)
        for name, server in servers.items()
    }
    results: dict[str, dict[str, tuple[Sample, int]]] = {name: {} for name in servers}
    names = list(servers)
    try:
        for query in queries:
            paths = {
                name: f"{server.DICOMWEB_ROOT}/studies" + (f"?{query.query}" if query.query else "")
                for name, server in servers.items()
            }
            matches = {
                name: _qido_request(connections[name], servers[name], paths[name]) for name in names
            }
            latencies: dict[str, list[float]] = {name: [] for name in names}
            for repeat in range(repeats):
                turn = names[repeat % len(names) :] + names[: repeat % len(names)]
                for name in turn:
                    started = time.perf_counter()
                    matches[name] = _qido_request(connections[name], servers[name], paths[name])
                    latencies[name].append(
                        (time.perf_counter() - started) * MILLISECONDS_PER_SECOND
                    )
            for name in names:
                sample = Sample(tuple(latencies[name]))
                results[name][query.label] = (sample, matches[name])
                LOGGER.info(
                    "QIDO-RS %s on %s: %d matches, median %.1f ms",
                    query.label,
                    name,
                    matches[name],
                    sample.median,
                )
    finally:
        for connection in connections.values():
            connection.close()
    return results


def _qido_request(connection: http.client.HTTPConnection, server: WebServer, path: str) -> int:
    connection.request("GET", path, headers={"Accept": DICOM_JSON})
    response = connection.getresponse()
    body = response.read()
    if response.status == http.HTTPStatus.NO_CONTENT:
        return 0
    if response.status != http.HTTPStatus.OK:
        raise BenchError(
            f"GET {path} on {server.name} returned status {response.status}: {body[:300]!r}"
        )
    matches = json.loads(body)
    if not isinstance(matches, list):
        raise BenchError(f"GET {path} on {server.name} returned JSON that is not an array")
    return len(matches)


# WADO-RS


def retrieve_study(connection: http.client.HTTPConnection, server: WebServer, study: Study) -> int:
    """Retrieve one study as stored and return the bytes received.

    Raises
    ------
    BenchError
        If the response is not 200 multipart/related, or has another number of
        parts than the study has instances.
    """
    path = f"{server.DICOMWEB_ROOT}/studies/{study.study_instance_uid}"
    connection.request("GET", path, headers={"Accept": ACCEPT_AS_STORED})
    response = connection.getresponse()
    if response.status != http.HTTPStatus.OK:
        body = response.read()
        raise BenchError(
            f"GET {path} on {server.name} returned status {response.status}: {body[:300]!r}"
        )
    boundary = _boundary(response.getheader("Content-Type", ""))
    received = 0
    delimiters = 0
    delimiter = b"--" + boundary.encode("latin-1")
    tail = b""
    for chunk in _chunks(response):
        received += len(chunk)
        window = tail + chunk
        delimiters += window.count(delimiter)
        # Keep the bytes a delimiter split between two chunks may start in.
        tail = window[-(len(delimiter) - 1) :]
    # The close delimiter "--boundary--" contains the delimiter too.
    parts = delimiters - 1
    if parts != len(study.files):
        raise BenchError(
            f"{server.name} returned {parts} parts for study {study.study_instance_uid}, "
            f"expected {len(study.files)}"
        )
    return received


def _chunks(response: http.client.HTTPResponse) -> Iterator[bytes]:
    while chunk := response.read(READ_SIZE):
        yield chunk


def _boundary(content_type: str) -> str:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.strip().partition("=")
        if name.lower() == "boundary":
            return value.strip('"')
    raise BenchError(f"the response has no multipart boundary: Content-Type {content_type!r}")


def measure_retrieve(
    servers: Mapping[str, WebServer], studies: Sequence[Study]
) -> dict[str, tuple[float, int]]:
    """Retrieve every study once from each server; return MB per second and bytes, by server.

    Each server has one connection. The servers take turns study by study,
    and the first server changes at every study, so that load from other
    work on the machine slows all of them alike. Each server's rate counts
    only the time of its own requests.
    """
    connections = {
        name: http.client.HTTPConnection(LOOPBACK, server.http_port, timeout=HTTP_TIMEOUT_SECONDS)
        for name, server in servers.items()
    }
    names = list(servers)
    received = dict.fromkeys(names, 0)
    seconds = dict.fromkeys(names, 0.0)
    try:
        for number, study in enumerate(studies):
            turn = names[number % len(names) :] + names[: number % len(names)]
            for name in turn:
                started = time.perf_counter()
                received[name] += retrieve_study(connections[name], servers[name], study)
                seconds[name] += time.perf_counter() - started
    finally:
        for connection in connections.values():
            connection.close()
    return {name: (received[name] / BYTES_PER_MB / seconds[name], received[name]) for name in names}


# The run


def run(work: Path, scale: Scale, args: argparse.Namespace) -> list[Table]:
    """Generate the corpus, load and measure every server, and return the tables."""
    studies = write_studies(scale, args.seed, work / "corpus")
    queries = build_queries(studies)
    results = {name: ServerResults() for name in args.server_names}
    servers = {name: make_server(name, work / name) for name in args.server_names}
    try:
        for name, server in servers.items():
            server.start()
            expected = sum(len(study.files) for study in studies)
            if args.load == "stow":
                rate = load_with_stow(server, studies, scale.stow_batch)
            else:
                rate = load_with_storescu(server, studies, work)
            stored = server.count_instances()
            if stored != expected:
                raise ServerError(
                    f"{name} stored {stored} of {expected} instances.\n{server.log_tail()}"
                )
            results[name].load_rate = rate
            LOGGER.info("%s loaded %d instances at %.0f/s (%s)", name, expected, rate, args.load)

        searching = {}
        for name, server in servers.items():
            if serves(server, f"{server.DICOMWEB_ROOT}/studies?limit=1", DICOM_JSON):
                searching[name] = server
            else:
                LOGGER.info("%s does not serve QIDO-RS", name)
        for name, latencies in measure_qido(searching, queries, scale.repeats).items():
            results[name].qido = latencies

        retrieving = [
            name
            for name, server in servers.items()
            if serves(
                server,
                f"{server.DICOMWEB_ROOT}/studies/{studies[0].study_instance_uid}",
                ACCEPT_AS_STORED,
            )
        ]
        for run_number in range(1, scale.retrieve_runs + 1):
            measured = measure_retrieve({name: servers[name] for name in retrieving}, studies)
            for name, (rate, received) in measured.items():
                results[name].retrieve_rates = [*(results[name].retrieve_rates or []), rate]
                results[name].retrieve_bytes = received
                LOGGER.info("WADO-RS run %d on %s: %.0f MB/s", run_number, name, rate)
    finally:
        for server in servers.values():
            server.stop()
    return tables(results, studies, queries, scale, args)


def tables(
    results: dict[str, ServerResults],
    studies: Sequence[Study],
    queries: Sequence[Query],
    scale: Scale,
    args: argparse.Namespace,
) -> list[Table]:
    """Format the load, QIDO-RS and WADO-RS tables."""
    names = list(results)
    instances = sum(len(study.files) for study in studies)
    corpus_mb = sum(study.size_bytes for study in studies) / BYTES_PER_MB
    corpus_note = (
        f"Corpus: {len(studies)} MR studies of {SERIES_PER_STUDY} series, "
        f"{instances} instances, {corpus_mb:.0f} MB, Explicit VR Little Endian."
    )
    method = (
        f"STOW-RS, {scale.stow_batch} instances per request, one connection"
        if args.load == "stow"
        else f"storescu, {PARALLEL_ASSOCIATIONS} associations"
    )
    load = Table(
        f"Loading the corpus ({method}), instances/s",
        ["server", "instances/s"],
        [[name, f"{results[name].load_rate:.0f}"] for name in names],
        [corpus_note],
    )

    qido = Table(
        f"QIDO-RS study search latency, ms, median (min-max) of {scale.repeats} requests",
        [
            "query",
            *names,
            *(["dicomvault / Orthanc"] if len(names) == 2 else []),
            f"matches ({', '.join(names)})",
        ],
        notes=[
            "One keep-alive connection per server, Accept: application/dicom+json, "
            "one warm-up request per query, the servers in turn request by request; "
            "the time runs to the last byte of the response.",
        ],
    )
    for query in queries:
        row = [query.label]
        samples: dict[str, Sample | None] = {}
        matches = []
        for name in names:
            measured = results[name].qido
            if measured is None:
                row.append(NOT_SERVED)
                samples[name] = None
                matches.append("-")
                continue
            sample, count = measured[query.label]
            row.append(sample.format(1))
            samples[name] = sample
            matches.append(str(count))
        if len(names) == 2:
            row.append(format_ratio(samples.get("dicomvault"), samples.get("Orthanc")))
        row.append(", ".join(matches))
        qido.rows.append(row)

    retrieve = Table(
        f"WADO-RS study retrieve throughput, MB/s, median (min-max) of {scale.retrieve_runs} runs",
        ["server", "MB/s", "MB received per run"],
        notes=[
            f"Every study in turn on one connection per server, Accept: {ACCEPT_AS_STORED}; "
            "the servers take turns study by study, and each server's rate counts the time "
            "of its own requests; the parts of each response are counted against the "
            "study's instances.",
            corpus_note,
        ],
    )
    for name in names:
        rates = results[name].retrieve_rates
        if rates is None:
            retrieve.rows.append([name, NOT_SERVED, "-"])
        else:
            retrieve.rows.append(
                [
                    name,
                    Sample(tuple(rates)).format(0),
                    f"{results[name].retrieve_bytes / BYTES_PER_MB:.0f}",
                ]
            )
    return [load, qido, retrieve]


def describe_machine() -> list[str]:
    """Return lines naming the date, the machine and the Orthanc version."""
    return [
        *machine_lines(),
        f"Orthanc DICOMweb plugin: {ORTHANC_DICOMWEB_PLUGIN.resolve().name}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 0 on success, 1 when a measurement failed, 2 on bad usage."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s", stream=sys.stderr)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if "Orthanc" in args.server_names and not ORTHANC_DICOMWEB_PLUGIN.exists():
        missing.append(str(ORTHANC_DICOMWEB_PLUGIN))
    if missing:
        print(
            f"bench: not found: {', '.join(missing)}; run tests/services.sh as root",
            file=sys.stderr,
        )
        return 2

    scale = scale_from(args)
    return run_and_report(
        lambda work: run(work, scale, args),
        describe_machine(),
        args.workdir,
        args.keep,
        args.markdown,
        prefix="dicomvault-dicomweb-bench-",
    )


if __name__ == "__main__":
    sys.exit(main())
