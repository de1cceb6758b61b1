"""The cost of sharing: C-STORE per node on PostgreSQL and a bucket, and C-FIND on a large index.

Run it with ``.venv/bin/python -m bench.scale_bench`` from the repository
root. It needs the PostgreSQL cluster and role of ``tests/services.sh`` and
``moto[server]`` from the test extras. Every server listens on 127.0.0.1.
The bucket is moto's S3-compatible server on loopback with moto's fake
credentials, so nothing reaches AWS.

Sections:

- ``store``: ``--runs`` times, in turn, one new dicomvault on each of three
  set-ups receives the ingest corpus of ``bench/run.py`` from storescu:
  the embedded default (SQLite, files), PostgreSQL with files, and
  PostgreSQL with the bucket. The runs are interleaved so that load from
  other tenants of the machine spreads over all three. Besides the rate,
  the CPU time of dicomvault per instance is read from /proc, and on the
  bucket the requests per instance (from moto's request log) and moto's
  CPU time per request. Then one object of the corpus's mean size is
  written ``--put-repeats`` times, each one alone, to a storage folder and
  to the bucket, to compare the two writes without DICOM around them.
  With ``--node-cpus``, the dicomvault servers and storescu run on those
  CPUs and PostgreSQL and moto on the others (see :mod:`bench.pinning`),
  as when the database and the bucket are other machines.
- ``find``: a new PostgreSQL database is migrated, then filled by SQL
  (``generate_series``) with ``--find-instances`` instances, and one
  dicomvault on it receives STUDY level C-FIND requests by Patient ID, by a
  Patient Name wildcard and by a Study Date range, ``--find-repeats``
  times each over one association from pynetdicom, then as many times
  from DCMTK's findscu, one process and association per query.

Results are Markdown tables on standard output.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
from psycopg import sql
from pydicom.dataset import Dataset
from pynetdicom import _config as pynetdicom_config

from bench.clients import (
    find_association,
    findscu,
    send_folders,
    split_into_folders,
    study_identifier,
)
from bench.corpus import CorpusSpec, write_corpus
from bench.databases import DEFAULT_ADMIN_URL, Postgres
from bench.loopback import LOOPBACK, free_port
from bench.pinning import node_and_services, pin
from bench.servers import Dicomvault, ServerError

LOGGER = logging.getLogger("bench.scale_bench")

MOTO_START_TIMEOUT_SECONDS = 30.0
MOTO_STOP_TIMEOUT_SECONDS = 10.0
BUCKET = "dicomvault-bench"
# The layout of the filled index: 2 studies per patient, 2 series per
# study, 10 instances per series, study dates spread over 3,650 days.
INSTANCES_PER_SERIES = 10
SERIES_PER_STUDY = 2
STUDIES_PER_PATIENT = 2
STUDY_DAYS = 3650
SETUPS = ("sqlite+files", "postgres+files", "postgres+s3")


class SharedDicomvault(Dicomvault):
    """dicomvault with an index URL and, optionally, a configuration file."""

    def __init__(self, workdir: Path, index_url: str, config: str, env: dict[str, str]) -> None:
        super().__init__(workdir)
        self.index_url = index_url
        self.config_text = config
        self.extra_env = env

    def command(self) -> list[str]:
        command = super().command()
        if self.index_url:
            command += ["--index-url", self.index_url]
        if self.config_text:
            config_path = self.workdir / "dicomvault.toml"
            config_path.write_text(self.config_text, encoding="utf-8")
            command += ["--config", str(config_path)]
        return command

    def environment(self) -> dict[str, str]:
        return {**super().environment(), **self.extra_env}


def fake_aws_environment(workdir: Path) -> dict[str, str]:
    """Return moto's fake credentials, with no shared files and no instance metadata lookups."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(workdir / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@dataclasses.dataclass(frozen=True)
class MotoProcess:
    """A running moto server: its endpoint URL, process id and request log."""

    endpoint: str
    pid: int
    log_path: Path

    def log_size(self) -> int:
        """Return the size of the request log in bytes, to count the requests after it."""
        return self.log_path.stat().st_size

    def count_requests(self, bucket: str, log_offset: int) -> int:
        """Return the requests to ``bucket`` that the log lists after byte ``log_offset``.

        moto logs one line per request, such as
        ``"PUT /bucket/archive/ab/cd/x.dcm HTTP/1.1" 200 -``, once it has
        answered it.
        """
        with self.log_path.open("rb") as log:
            log.seek(log_offset)
            text = log.read().decode("utf-8", errors="replace")
        count = 0
        for line in text.splitlines():
            _, _, request = line.partition('"')
            method, _, rest = request.partition(" ")
            path = rest.partition(" ")[0]
            if method and (path == f"/{bucket}" or path.startswith((f"/{bucket}/", f"/{bucket}?"))):
                count += 1
        return count


@contextlib.contextmanager
def moto_server(workdir: Path, cpus: set[int] | None = None) -> Iterator[MotoProcess]:
    """Run moto's S3 server on a loopback port, on ``cpus`` if given; yield the running server.

    Raises
    ------
    ServerError
        If it does not accept connections within MOTO_START_TIMEOUT_SECONDS.
    """
    import httpx

    port = free_port()
    endpoint = f"http://{LOOPBACK}:{port}"
    executable = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    command = [executable] if executable else [sys.executable, "-m", "moto.server"]
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "moto.log").open("wb") as log:
        process = subprocess.Popen(
            [*command, "-H", LOOPBACK, "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if cpus:
        pin(process.pid, cpus)
    try:
        deadline = time.monotonic() + MOTO_START_TIMEOUT_SECONDS
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{endpoint}/moto-api/data.json", timeout=1.0).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise ServerError(
                    f"moto_server did not respond on {endpoint} within "
                    f"{MOTO_START_TIMEOUT_SECONDS:.0f} s; see {log.name}"
                )
            time.sleep(0.1)
        yield MotoProcess(endpoint, process.pid, workdir / "moto.log")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=MOTO_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=MOTO_STOP_TIMEOUT_SECONDS)


def new_bucket(endpoint: str, env: dict[str, str]) -> str:
    """Create a bucket with a new name on the moto server and return the name."""
    import boto3

    name = f"{BUCKET}-{secrets.token_hex(4)}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket=name)
    return name


def s3_config(endpoint: str, bucket: str) -> str:
    """Return the TOML that stores files in ``bucket`` of the moto server."""
    return (
        "[storage]\n"
        'backend = "s3"\n'
        f's3_bucket = "{bucket}"\n'
        's3_prefix = "archive/"\n'
        f's3_endpoint_url = "{endpoint}"\n'
    )


@dataclasses.dataclass(frozen=True)
class StoreRun:
    """One set-up's C-STORE run: its rate, dicomvault's CPU and, on the bucket, moto's share."""

    rate: float
    server_cpu_ms: float  # dicomvault's CPU time per instance, all threads
    requests: int  # requests to the run's bucket while the instances arrived
    moto_cpu_ms: float  # moto's CPU time in that window, per request


def process_cpu_seconds(pid: int) -> float:
    """Return the user and system CPU time that process ``pid`` has used, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def store_once(
    setup: str,
    workdir: Path,
    folders: Sequence[Path],
    expected: int,
    moto: MotoProcess,
    aws_env: dict[str, str],
    postgres: Postgres,
) -> StoreRun:
    """Send ``folders`` to a new dicomvault on ``setup``; return the measured run.

    Raises
    ------
    ServerError
        If dicomvault did not store all ``expected`` instances.
    """
    index_url = "" if setup.startswith("sqlite") else postgres.create()
    bucket = new_bucket(moto.endpoint, aws_env) if "s3" in setup else ""
    config = s3_config(moto.endpoint, bucket) if bucket else ""
    server = SharedDicomvault(workdir, index_url, config, aws_env)
    with server:
        assert server.process is not None
        log_offset = moto.log_size()
        moto_cpu = process_cpu_seconds(moto.pid)
        server_cpu = process_cpu_seconds(server.process.pid)
        seconds = send_folders(server.port, server.ae_title, folders, nodelay=True)
        server_cpu = process_cpu_seconds(server.process.pid) - server_cpu
        moto_cpu = process_cpu_seconds(moto.pid) - moto_cpu
        stored = server.count_instances()
        requests = moto.count_requests(bucket, log_offset) if bucket else 0
    if stored != expected:
        raise ServerError(f"{setup} stored {stored} of {expected} instances\n{server.log_tail()}")
    if server.data_dir.exists():
        shutil.rmtree(server.data_dir)
    postgres.drop_all()
    return StoreRun(
        rate=expected / seconds,
        server_cpu_ms=server_cpu * 1000 / expected,
        requests=requests,
        moto_cpu_ms=moto_cpu * 1000 / requests if requests else 0.0,
    )


def run_store(args: argparse.Namespace, work: Path, postgres: Postgres) -> list[str]:
    """Measure C-STORE on the three set-ups, interleaved, then single writes; return Markdown."""
    spec = CorpusSpec(patients=args.instances, max_instances=args.instances, seed=args.seed)
    corpus = write_corpus(spec, work / "corpus")
    files = sorted(corpus.folder.rglob("*.dcm"))
    folders = split_into_folders(files, work / "parts", args.associations)
    aws_env = fake_aws_environment(work / "aws")
    runs: dict[str, list[StoreRun]] = {setup: [] for setup in SETUPS}

    with moto_server(work / "moto", args.service_cpus) as moto:
        for run in range(args.runs):
            for setup in SETUPS:
                result = store_once(
                    setup, work / f"{setup}-{run}", folders, len(files), moto, aws_env, postgres
                )
                runs[setup].append(result)
                LOGGER.info("run %d %s: %.0f instances/s", run + 1, setup, result.rate)
        write_lines = run_writes(args, work / "writes", files, moto, aws_env)

    embedded = statistics.median(run.rate for run in runs[SETUPS[0]])
    placement = (
        f"node on CPUs {_cpu_list(args.node_cpus)}, PostgreSQL and moto on CPUs "
        f"{_cpu_list(args.service_cpus)}"
        if args.node_cpus
        else "every process on every CPU"
    )
    lines = [
        f"### C-STORE per node, {len(files)} instances of {corpus.mean_instance_kb:.0f} kB, "
        f"{args.associations} association(s), {args.runs} interleaved runs, {placement}",
        "",
        "| set-up | instances/s, median (range) | ratio to SQLite + files "
        "| dicomvault CPU ms per instance | bucket requests per instance "
        "| moto CPU ms per request |",
        "|---|---|---|---|---|---|",
    ]
    for setup in SETUPS:
        rates = [run.rate for run in runs[setup]]
        median = statistics.median(rates)
        server_cpu = statistics.median(run.server_cpu_ms for run in runs[setup])
        if "s3" in setup:
            requests = statistics.median(run.requests for run in runs[setup]) / len(files)
            moto_cpu = statistics.median(run.moto_cpu_ms for run in runs[setup])
            bucket_columns = f"{requests:.2f} | {moto_cpu:.1f}"
        else:
            bucket_columns = "- | -"
        lines.append(
            f"| {setup} | {median:.0f} ({min(rates):.0f}-{max(rates):.0f}) "
            f"| {median / embedded:.2f}x | {server_cpu:.1f} | {bucket_columns} |"
        )
    return [*lines, "", *write_lines]


def run_writes(
    args: argparse.Namespace,
    work: Path,
    files: Sequence[Path],
    moto: MotoProcess,
    aws_env: dict[str, str],
) -> list[str]:
    """Time single object writes to a storage folder and to the bucket; return Markdown.

    The object is the corpus file whose size is nearest the mean. Each
    write runs alone, one after another, in this process, so the times
    are the latency of one write without DICOM, index or network peer.
    """
    from dicomvault.archive import new_storage_key
    from dicomvault.config import load_settings
    from dicomvault.storage.filesystem import FilesystemStorage
    from dicomvault.storage.s3 import S3Storage

    sizes = {path: path.stat().st_size for path in files}
    mean = sum(sizes.values()) / len(sizes)
    data = min(files, key=lambda path: abs(sizes[path] - mean)).read_bytes()
    bucket = new_bucket(moto.endpoint, aws_env)
    settings = load_settings(
        environ={},
        overrides={
            "storage.data_dir": str(work),
            "storage.backend": "s3",
            "storage.s3_bucket": bucket,
            "storage.s3_prefix": "archive/",
            "storage.s3_endpoint_url": moto.endpoint,
        },
    )
    with patched_environment(aws_env):
        bucket_storage = S3Storage(settings.storage)
    targets: dict[str, FilesystemStorage | S3Storage] = {
        "storage folder (write, fsync, rename, fsync folder)": FilesystemStorage(work / "files"),
        "bucket on moto (one PUT)": bucket_storage,
    }
    lines = [
        f"### One object of {len(data) / 1000:.0f} kB written {args.put_repeats} times, "
        "one write at a time",
        "",
        "| storage | ms per write, median (range) | bench CPU ms per write "
        "| moto CPU ms per write |",
        "|---|---|---|---|",
    ]
    for name, storage in targets.items():
        moto_cpu = process_cpu_seconds(moto.pid)
        own_cpu = time.process_time()
        milliseconds = []
        for _ in range(args.put_repeats):
            started = time.perf_counter()
            storage.put(new_storage_key(), (data,))
            milliseconds.append((time.perf_counter() - started) * 1000)
        own_cpu = (time.process_time() - own_cpu) * 1000 / args.put_repeats
        moto_cpu = (process_cpu_seconds(moto.pid) - moto_cpu) * 1000 / args.put_repeats
        lines.append(
            f"| {name} | {statistics.median(milliseconds):.2f} "
            f"({min(milliseconds):.2f}-{max(milliseconds):.2f}) | {own_cpu:.2f} "
            f"| {moto_cpu:.2f} |"
        )
    return lines


@contextlib.contextmanager
def patched_environment(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` in os.environ, and restore the earlier values on exit."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


FILL_STATEMENTS = (
    """
    INSERT INTO patients (pk, patient_key, patient_id, patient_name, patient_name_match,
                          patient_birth_date, patient_sex, updated_at)
    SELECT p, 'id:\\' || lpad(p::text, 7, '0'), 'P' || lpad(p::text, 7, '0'),
           'BENCH^P' || lpad(p::text, 7, '0'), 'BENCH^P' || lpad(p::text, 7, '0'),
           '19700101', 'O', now()
    FROM generate_series(1, %(patients)s) AS p
    """,
    """
    INSERT INTO studies (pk, patient_pk, study_instance_uid, study_date, study_time,
                         study_time_match, accession_number, study_description, updated_at)
    SELECT s, (s - 1) / %(studies_per_patient)s + 1, '1.2.826.0.1.3680043.10.1.' || s,
           to_char(date '2015-01-01' + (s %% %(days)s), 'YYYYMMDD'), '101500', '101500',
           'ACC' || s, 'CT chest', now()
    FROM generate_series(1, %(studies)s) AS s
    """,
    """
    INSERT INTO series (pk, study_pk, series_instance_uid, modality, series_number, updated_at)
    SELECT r, (r - 1) / %(series_per_study)s + 1, '1.2.826.0.1.3680043.10.2.' || r, 'CT',
           ((r - 1) %% %(series_per_study)s + 1)::text, now()
    FROM generate_series(1, %(series)s) AS r
    """,
    """
    INSERT INTO instances (pk, series_pk, sop_instance_uid, sop_class_uid, instance_number,
                           transfer_syntax_uid, storage_key, size, received_at, header)
    SELECT i, (i - 1) / %(instances_per_series)s + 1, '1.2.826.0.1.3680043.10.3.' || i,
           '1.2.840.10008.5.1.4.1.1.2', ((i - 1) %% %(instances_per_series)s + 1)::text,
           '1.2.840.10008.1.2.1', 'bench/' || i, 1000, now(),
           jsonb_build_object('00080018', jsonb_build_object(
               'vr', 'UI', 'Value', jsonb_build_array('1.2.826.0.1.3680043.10.3.' || i)))
    FROM generate_series(1, %(instances)s) AS i
    """,
)


def fill_index(postgres: Postgres, instances: int) -> tuple[str, float]:
    """Create, migrate and fill a database with ``instances``; return its URL and the seconds."""
    from dicomvault.index.database import open_index_engine

    url = postgres.create()
    open_index_engine(url).dispose()
    series = -(-instances // INSTANCES_PER_SERIES)
    studies = -(-series // SERIES_PER_STUDY)
    parameters = {
        "instances": instances,
        "instances_per_series": INSTANCES_PER_SERIES,
        "series": series,
        "series_per_study": SERIES_PER_STUDY,
        "studies": studies,
        "studies_per_patient": STUDIES_PER_PATIENT,
        "patients": -(-studies // STUDIES_PER_PATIENT),
        "days": STUDY_DAYS,
    }
    started = time.perf_counter()
    with psycopg.connect(postgres.url(postgres.names[-1], "postgresql")) as conn:
        for statement in FILL_STATEMENTS:
            conn.execute(statement, parameters)
        for table in ("patients", "studies", "series", "instances"):
            conn.execute(
                sql.SQL("SELECT setval(pg_get_serial_sequence({}, 'pk'), {})").format(
                    sql.Literal(table), sql.Literal(parameters[table])
                )
            )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    return url, time.perf_counter() - started


def run_find(args: argparse.Namespace, work: Path, postgres: Postgres) -> list[str]:
    """Fill a PostgreSQL index and time STUDY level C-FIND on it; return the Markdown lines."""
    url, fill_seconds = fill_index(postgres, args.find_instances)
    LOGGER.info("filled %d instances in %.0f s", args.find_instances, fill_seconds)
    queries = {
        "PatientID=P0000123": study_identifier(PatientID="P0000123"),
        "PatientName=BENCH^P000012*": study_identifier(PatientName="BENCH^P000012*"),
        "StudyDate=20200101-20200107": study_identifier(StudyDate="20200101-20200107"),
    }
    lines = [
        f"### C-FIND at STUDY level, PostgreSQL, {args.find_instances:,} instances "
        f"(filled by SQL in {fill_seconds:.0f} s), {args.find_repeats} repeats",
        "",
        "| query | matches | median ms | min-max ms | client CPU ms, median "
        "| findscu ms, median (min-max) |",
        "|---|---|---|---|---|---|",
    ]
    # pynetdicom formats a dump of every response for its DEBUG log even when
    # nothing logs it, and its standard event handlers do the same for each
    # message. Both cost this client about 0.17 ms of CPU per match, on the
    # same cores as the server, so they are turned off here.
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    server = SharedDicomvault(work / "find-server", url, "", {})
    with server, find_association(server.port, server.ae_title) as client:
        for name, identifier in queries.items():
            client.find(identifier)  # warm-up: plans and pages
            results = [client.find(identifier) for _ in range(args.find_repeats)]
            if any(result.status != 0 for result in results):
                raise ServerError(f"C-FIND {name} failed\n{server.log_tail()}")
            milliseconds = [result.seconds * 1000 for result in results]
            client_cpu = [result.client_cpu_seconds * 1000 for result in results]
            findscu_ms = time_findscu(server, name, identifier, len(results[0].matches), args)
            lines.append(
                f"| {name} | {len(results[0].matches)} | {statistics.median(milliseconds):.1f} "
                f"| {min(milliseconds):.1f}-{max(milliseconds):.1f} "
                f"| {statistics.median(client_cpu):.1f} "
                f"| {statistics.median(findscu_ms):.1f} "
                f"({min(findscu_ms):.1f}-{max(findscu_ms):.1f}) |"
            )
    postgres.drop_all()
    return lines


def time_findscu(
    server: SharedDicomvault,
    name: str,
    identifier: Dataset,
    matches: int,
    args: argparse.Namespace,
) -> list[float]:
    """Time ``--find-repeats`` whole DCMTK findscu runs of one query; return milliseconds each.

    Each run starts a process and opens an association, as a user's query
    does, but decodes the responses in C++, so little of the time is the
    client's CPU.

    Raises
    ------
    ServerError
        If findscu does not report the ``matches`` that pynetdicom received.
    """
    milliseconds = []
    for _ in range(args.find_repeats):
        seconds, found = findscu(server.port, server.ae_title, identifier)
        if found != matches:
            raise ServerError(f"findscu got {found} matches for {name}, pynetdicom {matches}")
        milliseconds.append(seconds * 1000)
    return milliseconds


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", default="store,find", help="sections: store, find (default both)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved C-STORE runs (default 3)")
    parser.add_argument(
        "--instances", type=int, default=1000, help="instances sent per C-STORE run (default 1000)"
    )
    parser.add_argument(
        "--associations", type=int, default=1, help="parallel storescu associations (default 1)"
    )
    parser.add_argument(
        "--put-repeats",
        type=int,
        default=200,
        help="single writes timed per storage after the C-STORE runs (default 200)",
    )
    parser.add_argument(
        "--find-instances",
        type=int,
        default=1_000_000,
        help="instances in the C-FIND index (default 1,000,000)",
    )
    parser.add_argument(
        "--find-repeats", type=int, default=21, help="timed repeats of each C-FIND (default 21)"
    )
    parser.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")
    parser.add_argument(
        "--node-cpus",
        type=_cpu_set,
        default=set(),
        help="comma-separated CPUs for the dicomvault servers and DICOM clients; "
        "PostgreSQL and moto then run on the other CPUs (default: no pinning)",
    )
    parser.add_argument(
        "--postgres-admin-url",
        default=os.environ.get("BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL),
        help="libpq URL of a role that may create databases, on loopback",
    )
    parser.add_argument("--workdir", type=Path, required=True, help="an empty folder for files")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sections and print their tables."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    args = parse_args(argv)
    sections = set(args.only.split(","))
    postgres = Postgres(args.postgres_admin_url)
    lines: list[str] = []
    with contextlib.ExitStack() as stack:
        args.service_cpus = set()
        if args.node_cpus:
            try:
                args.service_cpus = stack.enter_context(node_and_services(args.node_cpus))
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        try:
            if "store" in sections:
                lines += [*run_store(args, args.workdir / "store", postgres), ""]
            if "find" in sections:
                lines += run_find(args, args.workdir / "find", postgres)
        finally:
            postgres.drop_all()
    print("\n".join(lines))
    return 0


def _cpu_set(text: str) -> set[int]:
    try:
        return {int(part) for part in text.split(",") if part.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid CPU list {text!r}: expected numbers such as 0 or 0,1"
        ) from None


def _cpu_list(cpus: set[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


if __name__ == "__main__":
    sys.exit(main())
