"""Load: many storing associations and many querying clients on one dicomvault, for a set time.

Run it with ``.venv/bin/python -m bench.load_bench`` from the repository
root. It starts one ``dicomvault serve`` on 127.0.0.1 with its embedded
defaults (SQLite index, files), or with ``--postgres`` on a new database
of the PostgreSQL cluster of ``tests/services.sh``, and
``dimse.max_associations`` set to ``--max-associations``. Then it drives
it with the clients of ``bench/load.py``:

1. ``--storers`` Storage SCU associations and ``--finders`` C-FIND SCU
   associations are opened and held, and ``--qido-clients`` HTTP clients
   are created.
2. With those associations open, ``--extra-associations`` more are
   requested one after another and counted as rejected or accepted.
3. For ``--duration`` seconds, each storer sends small generated MR
   instances (64 x 64 pixels, about 8.6 kB) one after another, and each
   querier sends a STUDY level search by Patient ID (C-FIND or QIDO-RS)
   every ``--query-interval`` seconds.

Each client measures the latency of each operation, from the request to
the final response. The server's VmRSS is read from /proc every 0.2 s.
At the end a C-FIND counts the indexed instances, to compare with the
acknowledged ones. Results are Markdown tables on standard output.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bench.clients import count_instances
from bench.databases import DEFAULT_ADMIN_URL, Postgres
from bench.load import (
    SUCCESS,
    LoadPlan,
    LoadResult,
    LoadRun,
    MemorySampler,
    OperationLog,
    percentile,
    probe_association_limit,
    read_rss_kib,
)
from bench.report import Table, machine_lines, run_and_report
from bench.servers import Dicomvault

LOGGER = logging.getLogger("bench.load_bench")

OPEN_TIMEOUT_SECONDS = 300.0
KIB_PER_MIB = 1024


class LimitedDicomvault(Dicomvault):
    """dicomvault with ``dimse.max_associations`` set, on SQLite or on ``index_url``."""

    def __init__(self, workdir: Path, max_associations: int, index_url: str = "") -> None:
        super().__init__(workdir)
        self.max_associations = max_associations
        self.index_url = index_url

    def command(self) -> list[str]:
        config_path = self.workdir / "dicomvault.toml"
        config_path.write_text(
            f"[dimse]\nmax_associations = {self.max_associations}\n", encoding="utf-8"
        )
        command = [*super().command(), "--config", str(config_path)]
        if self.index_url:
            command += ["--index-url", self.index_url]
        return command


def operation_row(
    name: str, operations: OperationLog, seconds: float, success: set[int]
) -> list[str]:
    """Return a table row: count, failures, p50, p99 and max in ms, and operations per second."""
    failures = len(operations.errors) + sum(
        1 for status in operations.statuses if status not in success
    )
    if not operations.latencies:
        return [name, "0", str(failures), "-", "-", "-", "-"]
    latencies_ms = [latency * 1000 for latency in operations.latencies]
    rate = len(operations.statuses) / seconds if seconds > 0 else 0.0
    return [
        name,
        str(len(operations.statuses)),
        str(failures),
        f"{percentile(latencies_ms, 0.5):.1f}",
        f"{percentile(latencies_ms, 0.99):.1f}",
        f"{max(latencies_ms):.1f}",
        f"{rate:.1f}",
    ]


def measure(work: Path, args: argparse.Namespace) -> list[Table]:
    """Run the load once and return its tables.

    Raises
    ------
    RuntimeError
        If the clients could not open their associations.
    """
    databases = Postgres(args.postgres_admin_url)
    index_url = databases.create() if args.postgres else ""
    try:
        return _measure(work, args, index_url)
    finally:
        databases.drop_all()


def _measure(work: Path, args: argparse.Namespace, index_url: str) -> list[Table]:
    server = LimitedDicomvault(work / "dicomvault", args.max_associations, index_url)
    with server:
        assert server.process is not None
        pid = server.process.pid
        plan = LoadPlan(
            port=server.port,
            http_port=server.http_port,
            ae_title=server.ae_title,
            storers=args.storers,
            store_processes=args.store_processes,
            instances_per_association=args.instances_per_association,
            finders=args.finders,
            qido_clients=args.qido_clients,
            query_processes=args.query_processes,
            query_interval=args.query_interval,
            duration=args.duration,
            qido_path=f"{server.DICOMWEB_ROOT}/studies",
        )
        with MemorySampler(pid) as memory, LoadRun(plan) as run:
            opening = time.monotonic()
            opened = run.wait_opened(OPEN_TIMEOUT_SECONDS)
            open_seconds = time.monotonic() - opening
            probes = probe_association_limit(server.port, server.ae_title, args.extra_associations)
            run.start()
            result = run.finish()
        peak_hwm_kib = read_rss_kib(pid, "VmHWM")
        indexed = count_instances(server.port, server.ae_title)

    return tables(
        args, result, memory.samples_kib, peak_hwm_kib, opened, open_seconds, probes, indexed
    )


def tables(
    args: argparse.Namespace,
    result: LoadResult,
    rss_kib: list[int],
    peak_hwm_kib: int,
    opened: dict[str, int],
    open_seconds: float,
    probes: list[str],
    indexed: int,
) -> list[Table]:
    """Build the operations table and the server table."""
    store_seconds = result.store_seconds()
    operations = Table(
        f"Operations over {args.duration:.0f} s, index on "
        f"{'PostgreSQL' if args.postgres else 'SQLite'}",
        ["operation", "count", "failures", "p50 ms", "p99 ms", "max ms", "per second"],
    )
    operations.rows.append(
        operation_row("C-STORE", result.operations("store"), store_seconds, {SUCCESS})
    )
    operations.rows.append(
        operation_row("C-FIND", result.operations("find"), store_seconds, {SUCCESS})
    )
    operations.rows.append(
        operation_row("QIDO-RS", result.operations("qido"), store_seconds, {200, 204})
    )
    acknowledged = sum(len(uids) for uids in result.acknowledged().values())
    operations.notes += [
        f"Clients opened: {opened['store']} storing and {opened['find']} C-FIND associations "
        f"in {open_seconds:.1f} s, {opened['qido']} QIDO-RS clients.",
        f"Stores ran for {store_seconds:.1f} s. Acknowledged {acknowledged} instances; "
        f"the index counts {indexed}.",
        f"Queries every {args.query_interval:g} s per client. The rates divide by the "
        "stores' time.",
    ]
    errors = Counter(
        f"{report.kind}: {error}"
        for report in result.reports
        for error in report.open_errors + report.operations.errors
    )
    for error, count in sorted(errors.items()):
        operations.notes.append(f"{count} x {error}")

    rejected = probes.count("rejected-local-limit")
    server = Table(
        "Server",
        ["RSS at start MiB", "RSS peak MiB (sampled)", "VmHWM MiB", "RSS at end MiB", "rejected"],
    )
    server.rows.append(
        [
            f"{rss_kib[0] / KIB_PER_MIB:.0f}",
            f"{max(rss_kib) / KIB_PER_MIB:.0f}",
            f"{peak_hwm_kib / KIB_PER_MIB:.0f}",
            f"{rss_kib[-1] / KIB_PER_MIB:.0f}",
            f"{rejected} of {len(probes)}",
        ]
    )
    server.notes.append(
        f"dimse.max_associations = {args.max_associations}. The extra associations were "
        "requested while the clients held theirs; rejected means A-ASSOCIATE-RJ "
        f"local-limit-exceeded. Other outcomes: {sorted(set(probes) - {'rejected-local-limit'})}."
    )
    return [operations, server]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")

    parser.add_argument("--storers", type=int, default=100, help="storing associations")
    parser.add_argument(
        "--store-processes", type=int, default=10, help="worker processes of the storers"
    )
    parser.add_argument(
        "--instances-per-association",
        type=int,
        default=100_000,
        help="bound on the instances each storer sends (the duration ends it first)",
    )

    parser.add_argument("--finders", type=int, default=10, help="C-FIND associations")
    parser.add_argument("--qido-clients", type=int, default=10, help="QIDO-RS HTTP clients")
    parser.add_argument(
        "--query-processes",
        type=int,
        default=2,
        help="worker processes of the C-FIND clients, and as many of the QIDO-RS clients",
    )
    parser.add_argument(
        "--query-interval", type=float, default=0.1, help="seconds between one client's queries"
    )

    parser.add_argument(
        "--max-associations", type=int, default=110, help="dimse.max_associations of the server"
    )
    parser.add_argument(
        "--extra-associations",
        type=int,
        default=10,
        help="associations requested beyond the clients' while the clients hold theirs",
    )

    parser.add_argument(
        "--postgres",
        action="store_true",
        help="index in a new PostgreSQL database, dropped at the end (default: SQLite)",
    )
    parser.add_argument(
        "--postgres-admin-url",
        default=os.environ.get("BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL),
        help="libpq URL of a role that may create databases, on loopback",
    )
    parser.add_argument("--workdir", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder at the end")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")

    args = parser.parse_args(argv)
    for name in ("duration", "storers", "store_processes", "instances_per_association"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.query_processes <= 0:
        parser.error("--query-processes must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load benchmark and print its tables; return the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    header = [
        "# dicomvault under load",
        "",
        *machine_lines(),
        f"Command: {' '.join([sys.executable, '-m', 'bench.load_bench', *sys.argv[1:]])}",
    ]
    return run_and_report(
        lambda work: measure(work, args), header, args.workdir, args.keep, args.markdown, "load-"
    )


if __name__ == "__main__":
    sys.exit(main())
