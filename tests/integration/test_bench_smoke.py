"""The benchmark runner on a tiny corpus: every section runs and prints its tables.

Runs bench/run.sh --tiny (tens of instances, one run) as root, inside the
network namespace the script creates. No timing is asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_SECONDS = 300
SERVERS = ("storescp", "Orthanc", "dicomvault")


def parse_tables(output: str) -> dict[str, list[list[str]]]:
    """Map each "### title" of the runner's output to its table rows, header first, as cells."""
    tables: dict[str, list[list[str]]] = {}
    rows: list[list[str]] = []
    for line in output.splitlines():
        if line.startswith("### "):
            rows = tables.setdefault(line[4:], [])
        elif line.startswith("| "):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return tables


def table_starting(tables: dict[str, list[list[str]]], prefix: str) -> list[list[str]]:
    """Return the rows of the one table whose title starts with `prefix`."""
    matches = [rows for title, rows in tables.items() if title.startswith(prefix)]
    assert len(matches) == 1, f"expected one table titled {prefix!r}, got {list(tables)}"
    return matches[0]


@pytest.fixture(scope="module")
def bench_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Run every section on the tiny scale once and return standard output."""
    work = tmp_path_factory.mktemp("bench") / "work"
    completed = subprocess.run(
        ["bash", "bench/run.sh", "--tiny", "--workdir", str(work)],
        cwd=REPOSITORY,
        env={**os.environ, "BENCH_PYTHON": sys.executable},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, (
        f"bench/run.sh --tiny exited with {completed.returncode}:\n"
        f"{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
    )
    return completed.stdout


def test_ingest_table_has_every_server(bench_output: str) -> None:
    rows = table_starting(parse_tables(bench_output), "C-STORE ingest")
    header, body = rows[0], rows[1:]
    for server in SERVERS:
        assert server in header
    assert len(body) == 3
    for row in body:
        for server in SERVERS:
            cell = row[header.index(server)]
            assert cell[0].isdigit(), f"{server} has no rate in {row}"


def test_memory_table_has_every_server(bench_output: str) -> None:
    rows = table_starting(parse_tables(bench_output), "Peak resident memory")
    header, body = rows[0], rows[1:]
    for server in SERVERS:
        assert server in header
    first_case = body[0]
    for server in SERVERS:
        assert first_case[header.index(server)][0].isdigit(), first_case


def test_find_table_has_every_query(bench_output: str) -> None:
    rows = table_starting(parse_tables(bench_output), "C-FIND latency")
    queries = [row[0] for row in rows[1:]]
    assert len(queries) == 4
    assert queries[0] == "STUDY, PatientName=A*"
    assert queries[3].startswith("IMAGE")


def test_find_servers_match_same_series(bench_output: str) -> None:
    rows = table_starting(parse_tables(bench_output), "C-FIND latency")
    header, image_row = rows[0], rows[-1]
    matches = image_row[header.index("matches (Orthanc, dicomvault)")]
    orthanc_matches, vault_matches = matches.split(", ")
    assert int(orthanc_matches) > 0
    assert vault_matches == orthanc_matches


def test_index_build_table_has_servers(bench_output: str) -> None:
    rows = table_starting(parse_tables(bench_output), "Building the C-FIND index")
    assert [row[0] for row in rows[1:]] == ["Orthanc", "dicomvault"]


def test_move_table_has_servers(bench_output: str) -> None:
    rows = table_starting(parse_tables(bench_output), "C-MOVE to storescp")
    assert [row[0] for row in rows[1:]] == ["dicomvault", "Orthanc"]
