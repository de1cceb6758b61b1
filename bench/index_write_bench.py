"""The index transaction of one C-STORE on PostgreSQL, timed without the network protocol.

Run it with ``.venv/bin/python -m bench.index_write_bench`` from the
repository root. It needs the PostgreSQL cluster and role of
``tests/services.sh``. Each round creates a new database, indexes one
instance, then ``--instances`` more instances of the same series one at a
time with ``IndexWriter.add_instance``, as C-STORE does after the file is
written, and drops the database. The first ``--warm-up`` stores of each
round are not counted. Wall times are per store.

Results are one Markdown table on standard output.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from bench.databases import DEFAULT_ADMIN_URL, Postgres
from dicomvault.dicom.header import describe_instance
from dicomvault.index.database import open_index_engine
from dicomvault.index.writer import IndexWriter, StoredInstance


def make_instance(study_uid: str, series_uid: str) -> Dataset:
    """Build a small MR instance header with a new SOP Instance UID in the given series."""
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = "BENCH-1"
    ds.PatientName = "BENCH^INDEX"
    ds.StudyDate = "20240115"
    ds.Modality = "MR"
    ds.SeriesNumber = "1"
    ds.InstanceNumber = "1"
    return ds


def time_round(postgres: Postgres, instances: int, warm_up: int) -> list[float]:
    """Index ``instances`` + 1 instances into a new database; return seconds per counted store."""
    engine = open_index_engine(postgres.create())
    try:
        writer = IndexWriter(engine)
        study_uid, series_uid = generate_uid(), generate_uid()
        seconds: list[float] = []
        for number in range(instances + 1):
            header = describe_instance(make_instance(study_uid, series_uid), ExplicitVRLittleEndian)
            stored = StoredInstance(header, f"bench/{number}.dcm", 1000, "BENCH")
            started = time.perf_counter()
            writer.add_instance(stored)
            seconds.append(time.perf_counter() - started)
        return seconds[1 + warm_up :]
    finally:
        engine.dispose()
        postgres.drop_all()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="new databases (default 3)")
    parser.add_argument("--instances", type=int, default=500, help="stores per round (default 500)")
    parser.add_argument(
        "--warm-up", type=int, default=20, help="stores per round not counted (default 20)"
    )
    parser.add_argument(
        "--postgres-admin-url",
        default=DEFAULT_ADMIN_URL,
        help=f"URL of a role that may create databases (default {DEFAULT_ADMIN_URL})",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.instances <= args.warm_up or args.warm_up < 0:
        parser.error(
            "'--rounds' must be at least 1 and '--instances' greater than '--warm-up' "
            f"(at least 0), got {args.rounds}, {args.instances} and {args.warm_up}"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rounds and print the median and 90th percentile of each."""
    args = parse_args(argv)
    postgres = Postgres(args.postgres_admin_url)
    lines = [
        "| round | add_instance ms, median | 90th percentile |",
        "|---|---|---|",
    ]
    for number in range(1, args.rounds + 1):
        seconds = sorted(time_round(postgres, args.instances, args.warm_up))
        median = statistics.median(seconds) * 1000
        p90 = seconds[int(len(seconds) * 0.9)] * 1000
        lines.append(f"| {number} | {median:.2f} | {p90:.2f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
