"""Watched folders: `serve` with [ingest] watch_folders, and `dicomvault index --watch`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.corpus import write_instance
from tests.support.datasets import make_instance
from tests.support.dcmtk import findscu
from tests.support.network import free_port, wait_until
from tests.support.server import ServerFactory

pytestmark = pytest.mark.integration

TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 20
PIECES = 4
PAUSE_SECONDS = 0.6  # longer than the watch interval, shorter than settle_seconds


@pytest.fixture(scope="module")
def index_backend() -> str:
    """Watched folders share the indexing code that test_index_folder runs on PostgreSQL."""
    return "sqlite"


def copy_slowly(source: Path, target: Path) -> None:
    """Write `source` to `target` in pieces, pausing between them, as a slow copy does."""
    data = source.read_bytes()
    step = len(data) // PIECES + 1
    with target.open("wb") as file:
        for start in range(0, len(data), step):
            file.write(data[start : start + step])
            file.flush()
            time.sleep(PAUSE_SECONDS)


def test_serve_watches_slow_copy(
    tmp_path: Path, index_url: str, start_server: ServerFactory
) -> None:
    root = tmp_path / "root"
    watched = root / "incoming"
    watched.mkdir(parents=True)
    ds = make_instance()
    source = write_instance(tmp_path / "source.dcm", ds)
    config = (
        "[ingest]\n"
        f'import_roots = ["{root}"]\n'
        f'watch_folders = ["{watched}"]\n'
        "settle_seconds = 1.5\n"
        "watch_interval = 0.2\n"
    )
    server = start_server(index_url=index_url, config=config)

    copy_slowly(source, watched / "arriving.dcm")

    def found() -> bool:
        run = findscu(
            server.port,
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ds.StudyInstanceUID},
            server.ae_title,
        )
        return len(run.responses) == 1

    assert wait_until(found, TIMEOUT_SECONDS, interval=0.5), server.describe()
    with server.admin_client() as client:
        [task] = [t for t in client.get("/api/tasks").json() if t["kind"] == "watch"]
        report = client.get(f"/api/tasks/{task['id']}").json()
    assert task["status"] == "running"
    assert task["path"] == str(watched)
    # The file was read once, complete: never rejected as truncated on the way.
    assert report["progress"]["indexed"] == 1
    assert report["progress"]["failed"] == 0
    assert report["files"] == []


def test_watch_outside_roots_stops_serve(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    config_path = tmp_path / "dicomvault.toml"
    config_path.write_text(f'[ingest]\nimport_roots = ["{root}"]\nwatch_folders = ["{tmp_path}"]\n')

    run = run_cli(
        [
            "serve",
            "--config",
            str(config_path),
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(free_port()),
            "--http-port",
            str(free_port()),
        ],
        tmp_path,
    )

    assert run.returncode == 1
    assert "Cannot watch a folder of [ingest] watch_folders: Cannot index" in run.output


def test_index_watch_stops_on_sigterm(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMVAULT_")} | {
        "DICOMVAULT_INGEST_IMPORT_ROOTS": str(root),
        "DICOMVAULT_INGEST_SETTLE_SECONDS": "0.5",
        "DICOMVAULT_INGEST_WATCH_INTERVAL": "0.2",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dicomvault",
            "index",
            "--watch",
            str(root),
            "--data-dir",
            str(data_dir),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    output = b""
    try:
        write_instance(root / "new.dcm", make_instance())

        def indexed() -> bool:
            shown = run_cli(["tasks", "list", "--data-dir", str(data_dir)], tmp_path)
            return "indexed 1," in shown.output

        found = wait_until(indexed, TIMEOUT_SECONDS, interval=0.5)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=STOP_TIMEOUT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            output, _ = process.communicate(timeout=5)
        assert process.stdout is not None
        process.stdout.close()

    text = output.decode("utf-8", errors="replace")
    assert found, text
    assert process.returncode == 0, text
    assert "Received SIGTERM; stopping" in text
    assert "stopped in" in text
    assert "1 indexed" in text
