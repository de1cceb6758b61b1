"""Tests of the REST API of indexing tasks, served by uvicorn on a loopback port."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.corpus import write_instance
from tests.support.datasets import make_instance
from tests.support.network import wait_until
from tests.unit.conftest import WEB_TIMEOUT_SECONDS


@pytest.fixture(scope="module")
def index_backend() -> str:
    """Run on SQLite only, because these tests exercise HTTP routes and pages.

    The index queries behind them run on both back-ends in test_index,
    test_users and test_web_search.
    """
    return "sqlite"


def wait_for_status(client: httpx.Client, task_id: int, statuses: set[str]) -> dict[str, Any]:
    latest: dict[str, Any] = {}

    def reached() -> bool:
        latest.update(client.get(f"/api/tasks/{task_id}").json())
        return latest["status"] in statuses

    assert wait_until(reached, WEB_TIMEOUT_SECONDS), latest
    return latest


def write_old(path: Path) -> Path:
    write_instance(path, make_instance())
    past = time.time() - 60
    os.utime(path, (past, past))
    return path


class TestStartTask:
    def test_runs_and_reports(self, client: httpx.Client, root: Path) -> None:
        write_old(root / "a.dcm")
        (root / "notes.txt").write_text("not DICOM")
        os.utime(root / "notes.txt", (time.time() - 60, time.time() - 60))

        response = client.post("/api/tasks", json={"path": str(root)})

        assert response.status_code == 202, response.text
        started = response.json()
        assert started["status"] in {"queued", "running", "completed"}
        report = wait_for_status(client, started["id"], {"completed"})
        assert report["progress"]["indexed"] == 1
        assert report["progress"]["failed"] == 1
        assert report["files_total"] == 1
        assert report["files"] == [
            {
                "path": str(root / "notes.txt"),
                "outcome": "failed",
                "reason": "Not a DICOM file: no 'DICM' prefix after a 128-byte preamble "
                "(PS3.10 7.1)",
            }
        ]

    def test_outside_roots_rejected(self, client: httpx.Client, tmp_path: Path, root: Path) -> None:
        response = client.post("/api/tasks", json={"path": str(tmp_path), "mode": "import"})

        assert response.status_code == 403
        assert response.json() == {
            "detail": f"Cannot index {tmp_path} (resolved to {tmp_path}): it is not under an "
            f"import root ({root}); add a root to [ingest] import_roots or choose a folder "
            "under one"
        }

    def test_dot_dot_rejected(self, client: httpx.Client, root: Path) -> None:
        response = client.post("/api/tasks", json={"path": f"{root}/.."})

        assert response.status_code == 403

    def test_missing_folder(self, client: httpx.Client, root: Path) -> None:
        response = client.post("/api/tasks", json={"path": str(root / "missing")})

        assert response.status_code == 400
        assert response.json() == {"detail": f"Cannot index {root / 'missing'}: no such folder"}

    def test_invalid_mode(self, client: httpx.Client, root: Path) -> None:
        response = client.post("/api/tasks", json={"path": str(root), "mode": "copy"})

        assert response.status_code == 422


class TestListAndCancel:
    def test_cancel_running_task(self, client: httpx.Client, root: Path) -> None:
        # A modification time in the future keeps the task waiting for the file.
        path = write_instance(root / "growing.dcm", make_instance())
        future = time.time() + 3600
        os.utime(path, (future, future))
        task_id = client.post("/api/tasks", json={"path": str(root)}).json()["id"]
        wait_for_status(client, task_id, {"running"})

        response = client.post(f"/api/tasks/{task_id}/cancel")

        assert response.status_code == 202
        assert response.json()["cancel_requested"] is True
        assert wait_for_status(client, task_id, {"cancelled"})["progress"]["indexed"] == 0

    def test_cancel_queued_task(self, client: httpx.Client, root: Path) -> None:
        path = write_instance(root / "growing.dcm", make_instance())
        future = time.time() + 3600
        os.utime(path, (future, future))
        first = client.post("/api/tasks", json={"path": str(root)}).json()["id"]
        second = client.post("/api/tasks", json={"path": str(root)}).json()["id"]

        response = client.post(f"/api/tasks/{second}/cancel")
        client.post(f"/api/tasks/{first}/cancel")

        assert response.json()["status"] == "cancelled"
        wait_for_status(client, first, {"cancelled"})
        assert client.get(f"/api/tasks/{second}").json()["started_at"] is None

    def test_list_newest_first(self, client: httpx.Client, root: Path) -> None:
        write_old(root / "a.dcm")
        ids = [client.post("/api/tasks", json={"path": str(root)}).json()["id"] for _ in range(2)]
        for task_id in ids:
            wait_for_status(client, task_id, {"completed"})

        listed = client.get("/api/tasks").json()

        assert [task["id"] for task in listed[:2]] == ids[::-1]
        assert listed[0]["progress"]["skipped"] == 1
        assert listed[0]["progress"]["seconds_left"] is None

    def test_unknown_task(self, client: httpx.Client) -> None:
        assert client.get("/api/tasks/999999").status_code == 404
        response = client.post("/api/tasks/999999/cancel")
        assert response.status_code == 404
        assert response.json() == {"detail": "No indexing task has id 999999"}

    @pytest.mark.parametrize("task_id", ["0", "9223372036854775808", "-1"])
    def test_task_id_out_of_range(self, client: httpx.Client, task_id: str) -> None:
        # An id beyond 64 bits used to reach the index and fail with 500.
        assert client.get(f"/api/tasks/{task_id}").status_code == 422
        assert client.post(f"/api/tasks/{task_id}/cancel").status_code == 422

    def test_cancel_finished_task(self, client: httpx.Client, root: Path) -> None:
        write_old(root / "a.dcm")
        task_id = client.post("/api/tasks", json={"path": str(root)}).json()["id"]
        wait_for_status(client, task_id, {"completed"})

        response = client.post(f"/api/tasks/{task_id}/cancel")

        assert response.status_code == 409
        assert response.json() == {"detail": f"Task {task_id} has already finished: completed"}


def test_openapi_docs(client: httpx.Client) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    task_paths = {path for path in paths if path.startswith("/api/tasks")}
    assert task_paths == {"/api/tasks", "/api/tasks/{task_id}", "/api/tasks/{task_id}/cancel"}
    assert {"/api/login", "/api/logout", "/api/me", "/api/tokens", "/api/users"} <= set(paths)
    assert "/dicomweb/studies" in paths
