"""The DICOMweb benchmark on a tiny corpus against dicomvault alone: every table prints.

Runs bench/run_dicomweb_bench.sh --tiny (two studies, 20 instances, loaded
with STOW-RS) as root, inside the network namespace the script creates. No
timing is asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_bench_smoke import parse_tables, table_starting

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_SECONDS = 300
QUERIES = ["all studies", "PatientName", "PatientID", "StudyDate", "StudyInstanceUID"]


@pytest.fixture(scope="module")
def bench_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Run the tiny benchmark once against dicomvault and return standard output."""
    work = tmp_path_factory.mktemp("dicomweb-bench") / "work"
    completed = subprocess.run(
        [
            "bash",
            "bench/run_dicomweb_bench.sh",
            "--tiny",
            "--servers",
            "dicomvault",
            "--load",
            "stow",
            "--workdir",
            str(work),
        ],
        cwd=REPOSITORY,
        env={**os.environ, "BENCH_PYTHON": sys.executable},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, (
        f"bench/run_dicomweb_bench.sh --tiny exited with {completed.returncode}:\n"
        f"{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
    )
    return completed.stdout


def test_stow_load_has_rate(bench_output: str) -> None:
    rows = table_starting(parse_tables(bench_output), "Loading the corpus (STOW-RS")
    assert rows[0] == ["server", "instances/s"]
    assert rows[1][0] == "dicomvault"
    assert rows[1][1].isdigit(), rows


def test_qido_table_has_every_query(bench_output: str) -> None:
    rows = table_starting(parse_tables(bench_output), "QIDO-RS study search latency")
    assert rows[0] == ["query", "dicomvault", "matches (dicomvault)"]
    labels = [row[0] for row in rows[1:]]
    assert [label.split("=")[0] for label in labels] == QUERIES


def test_qido_figures(bench_output: str) -> None:
    rows = table_starting(parse_tables(bench_output), "QIDO-RS study search latency")
    for row in rows[1:]:
        assert row[1][0].isdigit(), row
        assert int(row[2]) >= 1, row


def test_wado_figures(bench_output: str) -> None:
    rows = table_starting(parse_tables(bench_output), "WADO-RS study retrieve throughput")
    assert rows[0] == ["server", "MB/s", "MB received per run"]
    assert rows[1][0] == "dicomvault"
    assert rows[1][1][0].isdigit(), rows
