"""bench.bucket_index_bench on a tiny scale: it runs and prints its table.

Needs moto_server from the test extras. No timing is asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_SECONDS = 180


def test_bucket_bench_tiny(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.bucket_index_bench",
            "--workdir",
            str(tmp_path / "work"),
            "--files",
            "40",
            "--runs",
            "1",
        ],
        cwd=REPOSITORY,
        env={k: v for k, v in os.environ.items() if not k.startswith("DICOMVAULT_")},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "| bucket (moto) |" in completed.stdout
    assert "Bucket against folder:" in completed.stdout
    assert "| list and GET only" in completed.stdout
