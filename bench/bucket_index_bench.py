"""Bucket indexing in objects per second, beside indexing the same files from a folder.

Run it with ``.venv/bin/python -m bench.bucket_index_bench --workdir DIR``
from the repository root. It writes a corpus of ``--files`` small
instances, uploads it to a bucket of moto's S3-compatible server on
loopback (fake credentials, nothing reaches AWS), then ``--runs`` times,
in turn, runs ``dicomvault index`` in place on the folder and on the bucket
prefix, each into a new data directory with the embedded SQLite index,
and then lists and reads every object without indexing, which is the
ceiling the S3 server sets.
The runs are interleaved so that load from other tenants of the machine
spreads over both.

moto is a Python process that answers each GET in a few milliseconds on
loopback; a real S3 endpoint answers in tens of milliseconds over a
network but serves many requests at once. The figure measures the
archive's own cost per object plus moto's, not the throughput of AWS S3.

Results are a Markdown table on standard output.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.corpus import CorpusSpec, write_corpus
from bench.scale_bench import fake_aws_environment, moto_server, new_bucket

LOGGER = logging.getLogger("bench.bucket_index_bench")

PREFIX = "incoming/"
DICOMVAULT = str(Path(sys.executable).parent / "dicomvault")
RUN_TIMEOUT_SECONDS = 1800
READ_THREADS = 8  # as many as each indexing worker uses
_SUMMARY = re.compile(r"(\d+) files found, (\d+) indexed")


def s3_client(endpoint: str, env: dict[str, str]) -> Any:
    """Return a boto3 S3 client of the moto server with its fake credentials."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def read_all(client: Any, bucket: str) -> float:
    """List PREFIX and GET every object with READ_THREADS threads; return objects per second.

    This is the ceiling the S3 server sets: what any reader of these
    objects gets from it on this machine.
    """
    started = time.perf_counter()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX)
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]

    def fetch(key: str) -> int:
        return len(client.get_object(Bucket=bucket, Key=key)["Body"].read())

    with concurrent.futures.ThreadPoolExecutor(READ_THREADS) as executor:
        list(executor.map(fetch, keys))
    return len(keys) / (time.perf_counter() - started)


def upload(folder: Path, endpoint: str, bucket: str, env: dict[str, str]) -> int:
    """Upload every .dcm file under ``folder`` to PREFIX of ``bucket``; return how many."""
    client = s3_client(endpoint, env)
    count = 0
    for path in sorted(folder.rglob("*.dcm")):
        key = PREFIX + path.relative_to(folder).as_posix()
        client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
        count += 1
    return count


def index_once(target: str, data_dir: Path, env: dict[str, str], expected: int) -> float:
    """Run ``dicomvault index target`` into a new data directory; return files per second.

    Raises
    ------
    RuntimeError
        If the command fails or indexes another number of files than ``expected``.
    """
    started = time.perf_counter()
    completed = subprocess.run(
        [DICOMVAULT, "index", target, "--data-dir", str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    elapsed = time.perf_counter() - started
    match = _SUMMARY.search(completed.stdout)
    if completed.returncode != 0 or match is None or int(match.group(2)) != expected:
        raise RuntimeError(
            f"dicomvault index {target} failed (exit code {completed.returncode}):\n"
            f"{completed.stdout}\n{completed.stderr}"
        )
    return expected / elapsed


def run(args: argparse.Namespace) -> list[str]:
    """Write, upload and index the corpus; return the Markdown table."""
    work: Path = args.workdir
    corpus = work / "corpus"
    spec = CorpusSpec(
        patients=max(1, args.files // 40),
        max_instances=args.files,
        small_pixels=True,
        seed=args.seed,
    )
    write_corpus(spec, corpus)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("DICOMVAULT_", "AWS_"))}
    aws = fake_aws_environment(work / "aws")
    rates: dict[str, list[float]] = {"folder": [], "bucket": [], "get": []}
    with moto_server(work / "moto") as moto:
        endpoint = moto.endpoint
        bucket = new_bucket(endpoint, aws)
        count = upload(corpus, endpoint, bucket, aws)
        LOGGER.info("Uploaded %d objects to s3://%s/%s", count, bucket, PREFIX)
        env = {
            **base_env,
            **aws,
            "DICOMVAULT_INGEST_IMPORT_ROOTS": str(corpus),
            "DICOMVAULT_INGEST_IMPORT_BUCKETS": f"s3://{bucket}/{PREFIX}",
            "DICOMVAULT_STORAGE_S3_ENDPOINT_URL": endpoint,
        }
        targets = {"folder": str(corpus), "bucket": f"s3://{bucket}/{PREFIX}"}
        for number in range(1, args.runs + 1):
            for name, target in targets.items():
                rate = index_once(target, work / f"{name}-{number}", env, count)
                rates[name].append(rate)
                LOGGER.info("Run %d, %s: %.0f files/s", number, name, rate)
            rates["get"].append(read_all(s3_client(endpoint, aws), bucket))
            LOGGER.info("Run %d, GET only: %.0f objects/s", number, rates["get"][-1])
    folder = statistics.median(rates["folder"])
    bucket_rate = statistics.median(rates["bucket"])
    get_rate = statistics.median(rates["get"])
    return [
        f"Bucket indexing, {count} instances, in place, SQLite index, "
        f"{args.runs} interleaved runs:",
        "",
        "| source | files/s, median (min-max) |",
        "|---|---|",
        f"| folder | {folder:.0f} ({min(rates['folder']):.0f}-{max(rates['folder']):.0f}) |",
        f"| bucket (moto) | {bucket_rate:.0f} "
        f"({min(rates['bucket']):.0f}-{max(rates['bucket']):.0f}) |",
        f"| list and GET only, {READ_THREADS} threads, no indexing (moto) | {get_rate:.0f} "
        f"({min(rates['get']):.0f}-{max(rates['get']):.0f}) |",
        "",
        f"Bucket against folder: {bucket_rate / folder:.2f} times. "
        f"Bucket indexing against GET only: {bucket_rate / get_rate:.2f} times.",
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=5000, help="instances (default 5000)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")
    parser.add_argument("--workdir", type=Path, required=True, help="an empty folder for files")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    print("\n".join(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
