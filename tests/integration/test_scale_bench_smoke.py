"""bench.scale_bench on a tiny scale: both sections run and print their tables.

Needs the PostgreSQL cluster of tests/services.sh and moto_server from the
test extras. No timing is asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

REPOSITORY = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_SECONDS = 180


def test_scale_bench_tiny(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.scale_bench",
            "--workdir",
            str(tmp_path / "work"),
            "--runs",
            "1",
            "--instances",
            "10",
            "--find-instances",
            "2000",
            "--find-repeats",
            "2",
            "--put-repeats",
            "3",
        ],
        cwd=REPOSITORY,
        env={k: v for k, v in os.environ.items() if not k.startswith("DICOMVAULT_")},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = [line for line in completed.stdout.splitlines() if line.startswith("| ")]
    for setup in ("sqlite+files", "postgres+files", "postgres+s3"):
        assert any(row.startswith(f"| {setup} |") for row in rows), completed.stdout
    # One PUT per instance, and no other request to the bucket while storing.
    bucket_row = next(row for row in rows if row.startswith("| postgres+s3 |"))
    assert bucket_row.split(" | ")[4] == "1.00", bucket_row
    for storage in ("| storage folder", "| bucket on moto"):
        assert any(row.startswith(storage) for row in rows), completed.stdout
    for query in ("PatientID=", "PatientName=", "StudyDate="):
        assert any(row.startswith(f"| {query}") for row in rows), completed.stdout
