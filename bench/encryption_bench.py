"""Encryption at rest benchmark: dicomvault with encryption off and on, in one run.

Run it with ``.venv/bin/python -m bench.encryption_bench [options]``. It
starts only dicomvault, on 127.0.0.1, so it needs no network namespace.

Steps:

1. Generate one MR study with bench/corpus.py: ``--instances`` instances of
   128 KiB (256 x 256, 16-bit, Explicit VR Little Endian).
2. For each of ``--runs`` runs, and in each run for encryption off and on
   (off first in odd runs, on first in even ones): start ``dicomvault
   serve`` empty, send the study with storescu over one association
   (TCP_NODELAY=1) and check the instance count with C-FIND, then retrieve
   the study with WADO-RS as stored (transfer-syntax=*) three times and
   check the number of parts, then stop the server.
3. Without a server, time the storage layer alone on the same files:
   ``put`` (which flushes each file to disk) and reading each file back
   whole three times, through ``FilesystemStorage`` and through
   ``EncryptedStorage``.
4. Report the medians, and the ratio of encryption on to off.

The tables go to standard output as Markdown; progress goes to standard error.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.clients import send_folders, split_into_folders
from bench.corpus import Corpus, CorpusSpec, write_corpus
from bench.loopback import LOOPBACK
from bench.report import Sample, Table, format_ratio, machine_lines, run_and_report
from bench.servers import Dicomvault, ServerError
from dicomvault.encryption.keys import LocalKeyProvider, key_from_variable
from dicomvault.storage.encrypted import EncryptedStorage
from dicomvault.storage.filesystem import FilesystemStorage

LOGGER = logging.getLogger("bench.encryption")

MODES = ("off", "on")
READ_SIZE = 1024 * 1024
BYTES_PER_MB = 1_000_000
HTTP_TIMEOUT_SECONDS = 600.0
# Reads per server start and per storage folder, each one sample.
RETRIEVES_PER_RUN = 3
ACCEPT_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
# A fixed, public test key: the benchmark's files are generated and thrown away.
BENCH_KEY = "5e" * 32


class EncryptedDicomvault(Dicomvault):
    """dicomvault with its embedded defaults and encryption at rest on."""

    name = "dicomvault, encryption on"

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["DICOMVAULT_ENCRYPTION_ENABLED"] = "true"
        env["DICOMVAULT_ENCRYPTION_KEY"] = BENCH_KEY
        return env


@dataclasses.dataclass
class Rates:
    """Per mode: server C-STORE and WADO-RS rates, and storage-layer times per file."""

    store: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    retrieve: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    put_ms: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    read_ms: dict[str, list[float]] = dataclasses.field(default_factory=dict)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(
        "--instances", type=int, default=500, help="instances of the study (default 500)"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each mode (default 3)")
    parser.add_argument("--tiny", action="store_true", help="20 instances and one run")
    parser.add_argument("--workdir", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder at the end")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)
    if args.tiny:
        args.instances, args.runs = 20, 1
    if args.instances < 1 or args.runs < 1:
        parser.error("--instances and --runs must be at least 1")
    return args


def retrieve_study(server: Dicomvault, study_instance_uid: str, expected: int) -> tuple[float, int]:
    """Retrieve the study with WADO-RS as stored; return the seconds and bytes received.

    Raises
    ------
    ServerError
        If the status is not 200 or the body has a number of parts other than ``expected``.
    """
    connection = http.client.HTTPConnection(LOOPBACK, server.http_port, HTTP_TIMEOUT_SECONDS)
    path = f"{Dicomvault.DICOMWEB_ROOT}/studies/{study_instance_uid}"
    started = time.perf_counter()
    connection.request("GET", path, headers={"Accept": ACCEPT_AS_STORED})
    response = connection.getresponse()
    body = bytearray()
    while chunk := response.read(READ_SIZE):
        body += chunk
    elapsed = time.perf_counter() - started
    connection.close()
    if response.status != 200:
        raise ServerError(f"WADO-RS retrieve returned {response.status}: {bytes(body[:500])!r}")
    boundary = response.getheader("Content-Type", "").split("boundary=")[-1].strip('"')
    parts = body.count(f"--{boundary}\r\n".encode())
    if parts != expected:
        raise ServerError(f"WADO-RS retrieve returned {parts} of {expected} instances")
    return elapsed, len(body)


def measure_once(work: Path, mode: str, corpus: Corpus, folders: list[Path], rates: Rates) -> None:
    """Start an empty server in ``mode``, store the study, retrieve it, and record the rates."""
    server_class = EncryptedDicomvault if mode == "on" else Dicomvault
    server = server_class(work)
    try:
        server.start()
        seconds = send_folders(server.port, server.ae_title, folders, nodelay=True)
        stored = server.count_instances()
        if stored != corpus.instances:
            raise ServerError(f"{server.name} stored {stored} of {corpus.instances} instances")
        rates.store.setdefault(mode, []).append(corpus.instances / seconds)

        study = corpus.series[0].study_instance_uid
        for _ in range(RETRIEVES_PER_RUN):
            seconds, size = retrieve_study(server, study, corpus.instances)
            rates.retrieve.setdefault(mode, []).append(size / BYTES_PER_MB / seconds)
        LOGGER.info(
            "encryption %s: C-STORE %.0f/s, WADO-RS %.0f MB/s",
            mode,
            rates.store[mode][-1],
            rates.retrieve[mode][-1],
        )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def measure_storage(work: Path, mode: str, files: list[Path], rates: Rates) -> None:
    """Put every file into a new storage folder, read each back; record milliseconds per file."""
    inner = FilesystemStorage(work)
    storage: FilesystemStorage | EncryptedStorage = inner
    if mode == "on":
        provider = LocalKeyProvider(key_from_variable(BENCH_KEY, "BENCH_KEY"))
        storage = EncryptedStorage(inner, provider)
    contents = [path.read_bytes() for path in files]
    try:
        started = time.perf_counter()
        keys = []
        for number, data in enumerate(contents):
            key = f"{number % 256:02x}/{number:08d}.dcm"
            storage.put(key, [data])
            keys.append(key)
        put_seconds = time.perf_counter() - started

        for _ in range(RETRIEVES_PER_RUN):
            started = time.perf_counter()
            for key, data in zip(keys, contents, strict=True):
                with storage.open(key) as stream:
                    if stream.read() != data:
                        raise ServerError(f"{key} read back differs from what was stored")
            read_seconds = time.perf_counter() - started
            rates.read_ms.setdefault(mode, []).append(read_seconds * 1000 / len(files))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rates.put_ms.setdefault(mode, []).append(put_seconds * 1000 / len(files))


def run(work: Path, args: argparse.Namespace) -> list[Table]:
    """Write the corpus, measure each mode ``args.runs`` times, and build the table."""
    spec = CorpusSpec(
        patients=1,
        studies_per_patient=1,
        series_per_study=1,
        instances_per_series=args.instances,
        modalities=("MR",),
    )
    LOGGER.info("writing %d MR instances", args.instances)
    corpus = write_corpus(spec, work / "corpus")
    folders = split_into_folders(corpus.files(), work / "split", 1)
    rates = Rates()
    for number in range(1, args.runs + 1):
        # Alternating the order spreads what a warm or busy machine adds to either mode.
        for mode in MODES if number % 2 else reversed(MODES):
            LOGGER.info("run %d, encryption %s", number, mode)
            measure_once(work / f"server-{number}-{mode}", mode, corpus, folders, rates)
            measure_storage(work / f"storage-{number}-{mode}", mode, corpus.files(), rates)

    table = Table(
        f"Encryption at rest, median (min-max) of {args.runs} runs "
        f"({args.runs * RETRIEVES_PER_RUN} samples for the reads)",
        ["measurement", "encryption off", "encryption on", "on / off"],
        notes=[
            f"One {corpus.instances}-instance MR study ({corpus.mean_instance_kb:.0f} kB each, "
            "Explicit VR Little Endian); each run starts an empty server per mode, the modes "
            "alternating which goes first.",
            "C-STORE: storescu, one association, TCP_NODELAY=1; instances per second "
            "until storescu exits.",
            "WADO-RS: the whole study as stored (transfer-syntax=*) on one connection, "
            f"{RETRIEVES_PER_RUN} times per server; MB per second of response body.",
        ],
    )
    for label, values, digits in (
        ("C-STORE, instances/s", rates.store, 0),
        ("WADO-RS study retrieve, MB/s", rates.retrieve, 0),
        ("storage put, ms per file", rates.put_ms, 2),
        ("storage read, ms per file", rates.read_ms, 2),
    ):
        off, on = Sample(tuple(values["off"])), Sample(tuple(values["on"]))
        table.rows.append([label, off.format(digits), on.format(digits), format_ratio(on, off)])
    table.notes.append(
        "Storage put and read: the storage classes alone, in this process, on the same "
        "files; put flushes each file to disk (fsync) as the archive does."
    )
    return [table]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 0 on success, 1 when a measurement failed, 2 on bad usage."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s", stream=sys.stderr)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if shutil.which("storescu") is None:
        print("bench: storescu not found; run tests/services.sh as root", file=sys.stderr)
        return 2
    return run_and_report(
        lambda work: run(work, args),
        machine_lines(),
        args.workdir,
        args.keep,
        args.markdown,
        prefix="dicomvault-encryption-bench-",
    )


if __name__ == "__main__":
    sys.exit(main())
