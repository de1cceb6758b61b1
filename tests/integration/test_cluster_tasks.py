"""A bucket indexing task shared by two `serve` processes, one of them killed in the middle.

Both nodes share one PostgreSQL index and one archive bucket on moto's
S3-compatible server, and index the same source bucket prefix. The node
that leads the task is killed with SIGKILL while chunks are being indexed;
the other must take the task over once the lease expires, index the
chunks the dead node held, and finish the task with every object counted
once.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from dicomvault.index.schema import indexed_files, ingest_task_chunks, instances, leases
from tests.integration.test_s3_storage import s3_config
from tests.support.corpus import write_instance
from tests.support.datasets import make_instance, new_uid
from tests.support.moto import MotoServer
from tests.support.network import LOOPBACK
from tests.support.postgres import PostgresDatabases
from tests.support.server import DicomvaultServer

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

OBJECTS = 600
SOURCE_PREFIX = "drop/"
LEASE_SECONDS = 2
TIMEOUT_SECONDS = 120.0
ADMIN_NAME = "clusteradmin"
ADMIN_PASSWORD = "cluster admin password"


@pytest.fixture(scope="module")
def index_backend() -> str:
    """PostgreSQL only: SQLite cannot be shared by processes on several machines."""
    return "postgres"


@pytest.fixture(scope="module")
def source_bucket(moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A bucket with OBJECTS small instances of one study under SOURCE_PREFIX."""
    bucket = moto_server.new_bucket()
    client = moto_server.client()
    study = new_uid()
    folder = tmp_path_factory.mktemp("source")
    for number in range(OBJECTS):
        ds = make_instance(StudyInstanceUID=study, InstanceNumber=number + 1)
        buffer = io.BytesIO(write_instance(folder / "one.dcm", ds).read_bytes())
        client.put_object(Bucket=bucket, Key=f"{SOURCE_PREFIX}{number:05d}.dcm", Body=buffer)
    return bucket


@pytest.fixture(scope="module")
def cluster(
    postgres_databases: PostgresDatabases,
    moto_server: MotoServer,
    source_bucket: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, list[DicomvaultServer]]]:
    """Two nodes on a new database, indexing chunks of 4 objects with one worker each."""
    index_url = postgres_databases.create()
    config = s3_config(
        moto_server,
        moto_server.new_bucket(),
        "[ingest]",
        f'import_buckets = ["s3://{source_bucket}/{SOURCE_PREFIX}"]',
        "batch_size = 4",
        "workers = 1",
        "[server]",
        f"lease_seconds = {LEASE_SECONDS}",
    )
    nodes = [
        DicomvaultServer(tmp_path_factory.mktemp(f"node-{name}"), index_url, config=config)
        for name in ("a", "b")
    ]
    for node in nodes:
        node.start()
    nodes[0].add_user(ADMIN_NAME, ADMIN_PASSWORD)
    try:
        yield index_url, nodes
    finally:
        for node in nodes:
            node.stop()


@contextlib.contextmanager
def logged_in(node: DicomvaultServer) -> Iterator[httpx.Client]:
    """Yield an HTTP client of ``node`` logged in as the admin, sending the CSRF token."""
    with httpx.Client(base_url=f"http://{LOOPBACK}:{node.http_port}", timeout=30) as client:
        response = client.post("/api/login", json={"name": ADMIN_NAME, "password": ADMIN_PASSWORD})
        assert response.status_code == 200, response.text
        client.headers["X-CSRF-Token"] = response.json()["csrf_token"]
        yield client


def wait_for(client: httpx.Client, task_id: int, done: object, what: str) -> dict[str, object]:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        task = client.get(f"/api/tasks/{task_id}").json()
        if done(task):  # type: ignore[operator]
            return task  # type: ignore[no-any-return]
        time.sleep(0.05)
    brief = {key: task.get(key) for key in ("status", "message", "progress")}
    raise AssertionError(f"Task {task_id}: {what} within {TIMEOUT_SECONDS:.0f} s: {brief}")


def test_killed_leader_task_finished_by_other_node(
    cluster: tuple[str, list[DicomvaultServer]], source_bucket: str
) -> None:
    index_url, nodes = cluster
    engine = create_engine(index_url)
    url = f"s3://{source_bucket}/{SOURCE_PREFIX}"
    with logged_in(nodes[0]) as client:
        response = client.post("/api/tasks", json={"path": url, "mode": "in_place"})
        assert response.status_code == 202, response.text
        task_id = response.json()["id"]
        wait_for(
            client,
            task_id,
            lambda task: task["progress"]["indexed"] >= 60,
            "no progress",
        )

    with engine.connect() as connection:
        owner = connection.execute(
            select(leases.c.owner).where(leases.c.name == f"task:{task_id}")
        ).scalar_one()
    pid = int(owner.split(":")[1])
    leader = next(node for node in nodes if node.process is not None and node.process.pid == pid)
    survivor = next(node for node in nodes if node is not leader)
    assert leader.process is not None
    leader.process.kill()
    leader.process.wait(10)

    with logged_in(survivor) as client:
        task = wait_for(
            client, task_id, lambda task: task["finished_at"] is not None, "not finished"
        )

    assert task["status"] == "completed", task
    progress = task["progress"]
    assert (progress["found"], progress["indexed"], progress["failed"]) == (OBJECTS, OBJECTS, 0)
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(instances)).scalar() == OBJECTS
        assert (
            connection.execute(
                select(func.count()).select_from(indexed_files).where(indexed_files.c.etag != "")
            ).scalar()
            == OBJECTS
        )
        statuses = set(connection.execute(select(ingest_task_chunks.c.status)).scalars())
    assert statuses == {"done"}
    engine.dispose()
    assert f"Indexing task {task_id} resumed" in survivor.log_text()
