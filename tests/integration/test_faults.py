"""Fault tests on a running `dicomvault serve`: full or read-only storage, database outage, stalls.

Nothing is simulated. The storage is a small tmpfs that fills up, the
index is a throw-away PostgreSQL cluster that the test stops and starts in
the middle of an ingest, and the stalled clients are real sockets and
associations that stop sending. Each test checks that the server returns
a failure instead of hanging, keeps nothing half stored, and serves
again once the fault is gone, without a restart.

The tests run as root, as CI does: they mount a tmpfs and run the
PostgreSQL 15 server binaries as the ``postgres`` user.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import io
import logging
import os
import secrets
import shutil
import socket
import sqlite3
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.support.cli import run_cli
from tests.support.datasets import make_instance
from tests.support.dcmtk import echoscu, format_status
from tests.support.network import LOOPBACK, free_port, wait_until
from tests.support.process import ToolRun, run_tool
from tests.support.server import DicomvaultServer

pytestmark = pytest.mark.integration

LOGGER = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0x0110

# pynetdicom SCU timeouts. A C-STORE without a response within
# SCU_TIMEOUT_SECONDS counts as a hang and fails the test.
SCU_TIMEOUT_SECONDS = 30
HTTP_TIMEOUT_SECONDS = 30
BOUNDARY = "fault-test-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'

# Storage full: an 8 MiB tmpfs, a filler file of 2 MiB that the test deletes
# to free space, and instances of about 300 KB, so about 20 instances fill it.
TMPFS_SIZE = "8m"
FILLER_BYTES = 2 * 1024 * 1024
INSTANCE_PIXEL_BYTES = 300 * 1024
MAX_INSTANCES_TO_FILL = 60
# A name starting with "." is reserved in the storage, so fsck does not count the filler.
FILLER_NAME = ".fault-test-filler"

# PostgreSQL stopped during an ingest. Each wait is bounded so that a hung
# server fails the test instead of stalling it.
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"
PG_ROLE = "dicomvault"
PG_DATABASE = "dicomvault"
PG_CTL_TIMEOUT_SECONDS = 30
INGEST_MAX_ATTEMPTS = 3000
INGEST_TIMEOUT_SECONDS = 60.0
ACKNOWLEDGED_BEFORE_STOP = 20
FAILURES_DURING_OUTAGE = 5
ACKNOWLEDGED_AFTER_RESTART = 20
PHASE_TIMEOUT_SECONDS = 20.0
# How long the files of stores whose outcome was unknown may take to be settled.
FSCK_CLEAN_TIMEOUT_SECONDS = 20.0

# Stalled clients: timeouts of a few seconds, so that each stall ends quickly.
ACSE_TIMEOUT_SECONDS = 3
NETWORK_TIMEOUT_SECONDS = 4
HTTP_READ_TIMEOUT_SECONDS = 3
# A stalled connection must be closed within its timeout plus this margin.
CLOSE_MARGIN_SECONDS = 3.0
# Threads the server may keep above its baseline once every stalled client is gone, such as
# pool workers started while the stalled connections were open.
THREAD_SLACK = 2
THREADS_SETTLE_SECONDS = 10.0
SLOW_CLIENT_CONFIG = f"""\
[dimse]
acse_timeout = {ACSE_TIMEOUT_SECONDS}
network_timeout = {NETWORK_TIMEOUT_SECONDS}
dimse_timeout = {NETWORK_TIMEOUT_SECONDS}

[http]
read_timeout = {HTTP_READ_TIMEOUT_SECONDS}
"""


@pytest.fixture(scope="module")
def as_root() -> None:
    """Fail with a clear message unless the tests run as root, which mount and runuser need."""
    if os.geteuid() != 0:
        pytest.fail("The fault tests must run as root: they mount a tmpfs and run PostgreSQL")


# --- instances, C-STORE and STOW-RS ---------------------------------------------------------


def mr_instance(pixel_bytes: int = 0) -> Dataset:
    """Build an MR instance with new UIDs and ``pixel_bytes`` bytes of random 16-bit pixel data.

    Random pixels make every instance take its full size on any file system.
    """
    ds = make_instance(PatientID="FAULTS", PatientName="Fault^Test")
    if pixel_bytes:
        columns = 512
        ds.Rows = pixel_bytes // (2 * columns)
        ds.Columns = columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.PixelData = os.urandom(ds.Rows * columns * 2)
    # pynetdicom picks the presentation context by the file meta's transfer syntax.
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@contextlib.contextmanager
def association(port: int, called_ae: str, calling_ae: str = "FAULTSCU") -> Iterator[Association]:
    """Yield an established association for C-ECHO and MR Image Storage; release it at the end."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = SCU_TIMEOUT_SECONDS
    ae.add_requested_context(Verification)
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate(LOOPBACK, port, ae_title=called_ae)
    assert assoc.is_established, f"association to {called_ae} @ {LOOPBACK}:{port} failed"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def c_store(assoc: Association, ds: Dataset) -> int | None:
    """Send ``ds`` with C-STORE; return the status, or None when no response came in time."""
    rsp = assoc.send_c_store(ds)
    status = rsp.get("Status") if rsp else None
    return None if status is None else int(status)


def part10_bytes(ds: Dataset) -> bytes:
    """Encode ``ds`` as a DICOM file (PS3.10) in Explicit VR Little Endian."""
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def stow(server: DicomvaultServer, ds: Dataset) -> httpx.Response:
    """Store ``ds`` with STOW-RS in a multipart/related body of one part."""
    body = (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part10_bytes(ds)
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return httpx.post(
        f"http://{LOOPBACK}:{server.http_port}/dicomweb/studies",
        content=body,
        headers={"Content-Type": MULTIPART, "Accept": "application/dicom+json"},
        timeout=HTTP_TIMEOUT_SECONDS,
    )


def readiness(server: DicomvaultServer) -> httpx.Response:
    """Request GET /ready."""
    return httpx.get(f"http://{LOOPBACK}:{server.http_port}/ready", timeout=HTTP_TIMEOUT_SECONDS)


def wait_for_readiness(server: DicomvaultServer, ready: bool) -> httpx.Response:
    """Poll /ready, whose result is cached for a second, until it reports ``ready``."""
    expected = 200 if ready else 503
    responses: list[httpx.Response] = []

    def reports_expected() -> bool:
        responses.append(readiness(server))
        return responses[-1].status_code == expected

    wait_until(reports_expected, PHASE_TIMEOUT_SECONDS, interval=0.2)
    return responses[-1]


def fsck(server: DicomvaultServer) -> ToolRun:
    """Run `dicomvault fsck --verify-checksums` on the server's data while it runs."""
    args = ["fsck", "--verify-checksums", "--data-dir", str(server.data_dir)]
    if server.index_url:
        args += ["--index-url", server.index_url]
    return run_cli(args, server.workdir)


def fsck_until_clean(server: DicomvaultServer) -> ToolRun:
    """Run fsck until it exits 0 or FSCK_CLEAN_TIMEOUT_SECONDS pass; return the last run."""
    deadline = time.monotonic() + FSCK_CLEAN_TIMEOUT_SECONDS
    checked = fsck(server)
    while checked.returncode != 0 and time.monotonic() < deadline:
        time.sleep(1.0)
        checked = fsck(server)
    assert checked.returncode == 0, checked.describe()
    return checked


def start_server(workdir: Path, index_url: str = "", config: str | None = None) -> DicomvaultServer:
    """Start `dicomvault serve` on a data directory under ``workdir``."""
    server = DicomvaultServer(workdir, index_url, config=config)
    server.start()
    return server


def server_pid(server: DicomvaultServer) -> int:
    """Return the process id of a running server."""
    assert server.process is not None
    assert server.returncode is None, server.describe()
    return server.process.pid


# --- storage on a full tmpfs ----------------------------------------------------------------


@pytest.fixture
def tmpfs_storage(tmp_path: Path, as_root: None) -> Iterator[Path]:
    """Mount an 8 MiB tmpfs on DATA_DIR/storage and unmount it when the test ends.

    The SQLite index and everything else of the data directory stay on the
    ordinary file system, so only the stored files run out of space.
    """
    storage = tmp_path / "data" / "storage"
    storage.mkdir(parents=True)
    mounted = run_tool(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(storage)])
    assert mounted.returncode == 0, mounted.describe()
    try:
        yield storage
    finally:
        unmounted = run_tool(["umount", str(storage)])
        if unmounted.returncode != 0:
            # The server is stopped before this finalizer, so a busy mount
            # is a leak of the test itself; detach it to free the tmpfs.
            run_tool(["umount", "--lazy", str(storage)])
        assert unmounted.returncode == 0, unmounted.describe()


@pytest.fixture
def tmpfs_server(tmp_path: Path, tmpfs_storage: Path) -> Iterator[DicomvaultServer]:
    """A server whose storage is the small tmpfs; stopped before the tmpfs is unmounted."""
    server = start_server(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def indexed_instance_count(data_dir: Path) -> int:
    """Count the rows of the instances table of the SQLite index."""
    uri = f"file:{data_dir / 'index.sqlite'}?mode=ro"
    connection = sqlite3.connect(uri, uri=True)
    try:
        (count,) = connection.execute("SELECT count(*) FROM instances").fetchone()
    finally:
        connection.close()
    return int(count)


def stored_file_count(storage: Path) -> int:
    """Count the stored instance files, leaving out reserved names such as .tmp and the filler."""
    return sum(1 for path in storage.rglob("*.dcm") if ".tmp" not in path.parts)


def fill_up(path: Path) -> None:
    """Write zeros to ``path`` until the file system has no space left."""
    chunk = bytes(64 * 1024)
    # Unbuffered, so that no unwritten bytes are left for close() to flush.
    with path.open("wb", buffering=0) as file:
        try:
            while True:
                file.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise


def assert_nothing_half_stored(server: DicomvaultServer, storage: Path, expected: int) -> None:
    """Check that only whole, indexed files are stored: no .part file, fsck clean, counts equal."""
    leftovers = sorted(path.name for path in (storage / ".tmp").glob("*.part"))
    assert leftovers == [], f"temporary files left in {storage / '.tmp'}"

    checked = fsck(server)
    assert checked.returncode == 0, checked.describe()
    assert f"Checked {expected} indexed instances and {expected} stored objects" in (
        checked.output
    ), checked.describe()

    assert indexed_instance_count(server.data_dir) == expected
    assert stored_file_count(storage) == expected


def test_full_storage_fails_then_recovers(
    tmpfs_server: DicomvaultServer, tmpfs_storage: Path
) -> None:
    server = tmpfs_server
    storage = tmpfs_storage
    pid = server_pid(server)
    filler = storage / FILLER_NAME
    filler.write_bytes(bytes(FILLER_BYTES))

    # C-STORE until the tmpfs is full: every status is success until the first 0xA700.
    statuses: list[int | None] = []
    with association(server.port, server.ae_title) as assoc:
        for _ in range(MAX_INSTANCES_TO_FILL):
            status = c_store(assoc, mr_instance(INSTANCE_PIXEL_BYTES))
            statuses.append(status)
            if status != SUCCESS:
                break
    acknowledged = statuses.count(SUCCESS)
    assert statuses[-1] == OUT_OF_RESOURCES, [format_status(status) for status in statuses]
    assert acknowledged == len(statuses) - 1
    assert acknowledged >= 5, "the tmpfs filled up before five instances"
    LOGGER.info("%d instances stored before C-STORE returned 0xA700", acknowledged)

    # STOW-RS of an instance of the same size fails too.
    rejected = stow(server, mr_instance(INSTANCE_PIXEL_BYTES))
    assert rejected.status_code == 507, rejected.text
    (failed,) = rejected.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [OUT_OF_RESOURCES]

    # The readiness check stores an object of a few bytes, which still fits
    # after a failed instance, so /ready reports "full" only once no byte is left.
    top_up = storage / f"{FILLER_NAME}-rest"
    fill_up(top_up)
    not_ready = wait_for_readiness(server, ready=False)
    assert not_ready.status_code == 503, not_ready.text
    assert not_ready.json()["checks"]["storage"] == "full"

    assert_nothing_half_stored(server, storage, acknowledged)

    # Free space: the same server process stores again over DIMSE and HTTP.
    top_up.unlink()
    filler.unlink()
    assert_stores_again(server, pid)
    assert_nothing_half_stored(server, storage, acknowledged + 2)


def assert_stores_again(server: DicomvaultServer, pid: int) -> None:
    """Check that the server process ``pid`` stores over C-STORE and STOW-RS, and is ready."""
    with association(server.port, server.ae_title) as assoc:
        status = c_store(assoc, mr_instance(INSTANCE_PIXEL_BYTES))
    assert status == SUCCESS, format_status(status)
    stored = stow(server, mr_instance(INSTANCE_PIXEL_BYTES))
    assert stored.status_code == 200, stored.text
    ready = wait_for_readiness(server, ready=True)
    assert ready.status_code == 200, ready.text
    assert server_pid(server) == pid


def remount(storage: Path, mode: str) -> None:
    """Remount the tmpfs on ``storage`` with ``mode`` "ro" or "rw"."""
    remounted = run_tool(["mount", "-o", f"remount,{mode}", str(storage)])
    assert remounted.returncode == 0, remounted.describe()


def test_read_only_storage_fails_then_recovers(
    tmpfs_server: DicomvaultServer, tmpfs_storage: Path
) -> None:
    server = tmpfs_server
    storage = tmpfs_storage
    pid = server_pid(server)
    with association(server.port, server.ae_title) as assoc:
        status = c_store(assoc, mr_instance(INSTANCE_PIXEL_BYTES))
    assert status == SUCCESS, format_status(status)

    # Read-only: C-STORE gets 0xA700, STOW-RS 507, and /ready reports the storage full.
    remount(storage, "ro")
    try:
        with association(server.port, server.ae_title) as assoc:
            status = c_store(assoc, mr_instance(INSTANCE_PIXEL_BYTES))
        rejected = stow(server, mr_instance(INSTANCE_PIXEL_BYTES))
        not_ready = wait_for_readiness(server, ready=False)
    finally:
        remount(storage, "rw")
    assert status == OUT_OF_RESOURCES, format_status(status)
    assert rejected.status_code == 507, rejected.text
    (failed,) = rejected.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [OUT_OF_RESOURCES]
    assert not_ready.status_code == 503, not_ready.text
    assert not_ready.json()["checks"]["storage"] == "full"
    assert_nothing_half_stored(server, storage, 1)

    # Writable again: the same server process stores over DIMSE and HTTP.
    assert_stores_again(server, pid)
    assert_nothing_half_stored(server, storage, 3)


# --- PostgreSQL stopped and started during an ingest ----------------------------------------


class ThrowawayPostgres:
    """A PostgreSQL 15 cluster of the test's own, on a free loopback port.

    The shared cluster on port 5432 is never touched. The cluster's files
    live in a new directory under the system temporary directory, owned by
    the ``postgres`` user, who runs the server binaries.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dicomvault-faults-pg-"))
        shutil.chown(self.root, user=PG_USER)
        self.data = self.root / "data"
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.url = (
            f"postgresql+psycopg://{PG_ROLE}:{self.password}@{LOOPBACK}:{self.port}/{PG_DATABASE}"
        )

    def _as_postgres(self, tool: str, *args: str) -> ToolRun:
        run = run_tool(["runuser", "-u", PG_USER, "--", str(PG_BIN / tool), *args])
        assert run.returncode == 0, run.describe()
        return run

    def create(self) -> None:
        """Run initdb, start the server and create the login role and its database."""
        # Local connections (the socket in self.root) need no password; TCP
        # connections, the ones dicomvault makes, need the role's password.
        self._as_postgres(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            PG_USER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-sync",
            "--no-instructions",
        )
        self.start()
        with psycopg.connect(
            host=str(self.root), port=self.port, user=PG_USER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f"CREATE ROLE {PG_ROLE} LOGIN PASSWORD '{self.password}'")
            conn.execute(f"CREATE DATABASE {PG_DATABASE} OWNER {PG_ROLE}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses={LOOPBACK}"
        self._as_postgres(
            "pg_ctl",
            "--pgdata",
            str(self.data),
            "--log",
            str(self.root / "postgres.log"),
            "--options",
            options,
            "--wait",
            "--timeout",
            str(PG_CTL_TIMEOUT_SECONDS),
            "start",
        )

    def stop(self) -> None:
        """Stop the server in fast mode: open transactions are rolled back, clients disconnected."""
        self._as_postgres(
            "pg_ctl",
            "--pgdata",
            str(self.data),
            "--mode",
            "fast",
            "--wait",
            "--timeout",
            str(PG_CTL_TIMEOUT_SECONDS),
            "stop",
        )

    def running(self) -> bool:
        """Whether the server of this cluster runs."""
        status = run_tool(
            [
                "runuser",
                "-u",
                PG_USER,
                "--",
                str(PG_BIN / "pg_ctl"),
                "--pgdata",
                str(self.data),
                "status",
            ]
        )
        return status.returncode == 0

    def indexed_sop_instance_uids(self) -> set[str]:
        """Read the SOP Instance UID of every indexed instance."""
        with psycopg.connect(
            host=str(self.root), port=self.port, user=PG_USER, dbname=PG_DATABASE
        ) as conn:
            rows = conn.execute("SELECT sop_instance_uid FROM instances").fetchall()
        return {str(row[0]) for row in rows}

    def remove(self) -> None:
        """Stop the server if it runs and delete the cluster's files."""
        try:
            if self.data.exists() and self.running():
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def postgres_cluster(as_root: None) -> Iterator[ThrowawayPostgres]:
    """A new PostgreSQL cluster with an empty database, stopped and deleted when the test ends."""
    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"PostgreSQL 15 server binaries not found in {PG_BIN}")
    cluster = ThrowawayPostgres()
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.remove()


@dataclasses.dataclass(frozen=True)
class StoreAttempt:
    """One C-STORE of the ingest loop: when it started, what it returned and how long it took."""

    sop_instance_uid: str
    started: float
    seconds: float
    status: int | None


class Ingest:
    """C-STORE small instances one after another on one association, in a thread of its own.

    The loop ends when the ``with`` block ends, after ``INGEST_MAX_ATTEMPTS``
    instances or after ``INGEST_TIMEOUT_SECONDS``, whichever comes first.
    An exception in the loop is kept in ``error``.
    """

    def __init__(self, server: DicomvaultServer) -> None:
        self.server = server
        self.attempts: list[StoreAttempt] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="fault-ingest")
        self.error: BaseException | None = None

    def __enter__(self) -> Ingest:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=SCU_TIMEOUT_SECONDS + 5)

    def _run(self) -> None:
        deadline = time.monotonic() + INGEST_TIMEOUT_SECONDS
        try:
            with association(self.server.port, self.server.ae_title, "INGESTSCU") as assoc:
                while (
                    not self._stop.is_set()
                    and len(self.attempts) < INGEST_MAX_ATTEMPTS
                    and time.monotonic() < deadline
                    and assoc.is_established
                ):
                    ds = mr_instance()
                    started = time.monotonic()
                    status = c_store(assoc, ds)
                    attempt = StoreAttempt(
                        ds.SOPInstanceUID, started, time.monotonic() - started, status
                    )
                    with self._lock:
                        self.attempts.append(attempt)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def snapshot(self) -> list[StoreAttempt]:
        """Return the attempts so far."""
        with self._lock:
            return list(self.attempts)

    def count(self, status: int | None, since: float) -> int:
        """Count the attempts with ``status`` that started at ``since`` or later."""
        return sum(
            1
            for attempt in self.snapshot()
            if attempt.status == status and attempt.started >= since
        )

    def wait_for(self, status: int, count: int, since: float) -> bool:
        """Wait until ``count`` attempts that started at ``since`` or later returned ``status``."""
        return (
            wait_until(
                lambda: self.count(status, since) >= count or not self._thread.is_alive(),
                PHASE_TIMEOUT_SECONDS,
            )
            and self.count(status, since) >= count
        )


@pytest.fixture
def postgres_server(
    tmp_path: Path, postgres_cluster: ThrowawayPostgres
) -> Iterator[DicomvaultServer]:
    """A server indexing into the throw-away cluster; stopped before the cluster."""
    server = start_server(tmp_path, index_url=postgres_cluster.url)
    try:
        yield server
    finally:
        server.stop()


def test_postgres_restart_during_ingest(
    postgres_server: DicomvaultServer, postgres_cluster: ThrowawayPostgres
) -> None:
    server = postgres_server
    cluster = postgres_cluster
    pid = server_pid(server)

    with Ingest(server) as ingest, association(server.port, server.ae_title, "ECHOSCU") as echo:
        began = time.monotonic()
        assert ingest.wait_for(SUCCESS, ACKNOWLEDGED_BEFORE_STOP, began), ingest.error

        # Database down: stores fail with a status, C-ECHO on an open association
        # still works, and /ready is 503.
        cluster.stop()
        stopped = time.monotonic()
        assert ingest.wait_for(PROCESSING_FAILURE, FAILURES_DURING_OUTAGE, stopped), (
            f"{ingest.error}; outcomes since the stop: "
            f"{[format_status(a.status) for a in ingest.snapshot() if a.started >= stopped]}"
        )
        echoed = echo.send_c_echo()
        assert echoed.get("Status") == SUCCESS, echoed
        # A new association is rejected at once (rejected-transient), because
        # the registry of remote nodes that decides what a caller may do is in
        # the index database.
        rejected = echoscu(server.port, server.ae_title)
        assert rejected.returncode != 0, rejected.describe()
        assert "Rejected Transient" in rejected.output, rejected.describe()
        not_ready = wait_for_readiness(server, ready=False)
        assert not_ready.status_code == 503, not_ready.text
        assert not_ready.json()["checks"]["database"] == "failed"

        # Database back: the same server process stores again.
        restarting = time.monotonic()
        cluster.start()
        restarted = time.monotonic()
        assert ingest.wait_for(SUCCESS, ACKNOWLEDGED_AFTER_RESTART, restarted), (
            f"{ingest.error}; outcomes since the restart: "
            f"{[format_status(a.status) for a in ingest.snapshot() if a.started >= restarted]}"
        )
    assert ingest.error is None, repr(ingest.error)
    accepted = echoscu(server.port, server.ae_title)
    assert accepted.returncode == 0, accepted.describe()
    ready = wait_for_readiness(server, ready=True)
    assert ready.status_code == 200, ready.text
    assert server_pid(server) == pid

    # Every store got a response in time, with success or a failure status.
    attempts = ingest.snapshot()
    unanswered = [attempt for attempt in attempts if attempt.status is None]
    assert unanswered == [], f"{len(unanswered)} of {len(attempts)} stores got no response"
    slowest = max(attempt.seconds for attempt in attempts)
    assert slowest < SCU_TIMEOUT_SECONDS
    outcomes = {attempt.status for attempt in attempts}
    assert outcomes <= {SUCCESS, PROCESSING_FAILURE}, [format_status(s) for s in outcomes]
    # While the database was down, no store succeeded.
    during_outage = [
        a for a in attempts if stopped <= a.started and a.started + a.seconds < restarting
    ]
    assert len(during_outage) >= FAILURES_DURING_OUTAGE
    assert all(attempt.status == PROCESSING_FAILURE for attempt in during_outage)

    LOGGER.info(
        "%d stores: %d acknowledged, %d failed with 0x0110; slowest response %.2f s; "
        "%d acknowledged after the database started again",
        len(attempts),
        sum(1 for attempt in attempts if attempt.status == SUCCESS),
        sum(1 for attempt in attempts if attempt.status == PROCESSING_FAILURE),
        slowest,
        sum(1 for a in attempts if a.status == SUCCESS and a.started >= restarted),
    )

    # Every acknowledged instance is indexed, no failed one is, and fsck finds
    # the index and the storage in agreement.
    acknowledged = {a.sop_instance_uid for a in attempts if a.status == SUCCESS}
    failed = {a.sop_instance_uid for a in attempts if a.status != SUCCESS}
    indexed = cluster.indexed_sop_instance_uids()
    assert acknowledged - indexed == set()
    # A commit that PostgreSQL applied just before the stop, with its reply
    # lost, counts as a success, because the server queries the index again.
    # A store whose outcome could not be queried during the outage keeps its
    # file until the server, retrying every second, reaches the index. Then
    # fsck is clean.
    assert indexed & failed == set()
    checked = fsck_until_clean(server)
    expected = len(indexed)
    assert f"Checked {expected} indexed instances and {expected} stored objects" in (
        checked.output
    ), checked.describe()


# --- stalled clients ------------------------------------------------------------------------


def thread_count(pid: int) -> int:
    """Read the number of threads of process ``pid`` from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads line in /proc/{pid}/status")


def seconds_until_closed(sock: socket.socket) -> float:
    """Read from ``sock`` until the server closes it; return the seconds that took."""
    started = time.monotonic()
    sock.settimeout(SCU_TIMEOUT_SECONDS)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def seconds_until_ended(assoc: Association) -> float:
    """Wait until the server ends ``assoc``; return the seconds that took."""
    started = time.monotonic()
    wait_until(lambda: not assoc.is_established, SCU_TIMEOUT_SECONDS)
    return time.monotonic() - started


def silent_connection(port: int) -> float:
    """Connect and send nothing; return the seconds until the server closes the connection."""
    with socket.create_connection((LOOPBACK, port)) as sock:
        return seconds_until_closed(sock)


def stalled_pdu(assoc: Association) -> float:
    """Send the start of a P-DATA-TF PDU on ``assoc`` and stall; return the seconds until it ends.

    The PDU header announces 1,000 bytes and only 10 follow, so the server
    waits inside the PDU.
    """
    transport = assoc.dul.socket
    assert transport is not None and transport.socket is not None
    transport.socket.sendall(b"\x04\x00" + struct.pack(">L", 1000) + bytes(10))
    return seconds_until_ended(assoc)


def stalled_http_body(port: int) -> tuple[bytes, float]:
    """Send 100 of 1,000 body bytes of a STOW-RS request and stall; return response and seconds."""
    with socket.create_connection((LOOPBACK, port)) as sock:
        sock.sendall(
            b"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Content-Type: {MULTIPART}\r\nContent-Length: 1000\r\n\r\n".encode()
            + bytes(100)
        )
        started = time.monotonic()
        sock.settimeout(SCU_TIMEOUT_SECONDS)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(4096):
                received += chunk
        return received, time.monotonic() - started


def idle_association(port: int, called_ae: str, calling_ae: str) -> Association:
    """Return an association whose SCU waits far longer than the server's timeouts."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = SCU_TIMEOUT_SECONDS
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, port, ae_title=called_ae)
    assert assoc.is_established, f"association to {called_ae} @ {LOOPBACK}:{port} failed"
    return assoc


@pytest.fixture
def slow_client_server(tmp_path: Path) -> Iterator[DicomvaultServer]:
    """A server with ACSE, network and HTTP read timeouts of a few seconds."""
    server = start_server(tmp_path, config=SLOW_CLIENT_CONFIG)
    try:
        yield server
    finally:
        server.stop()


def test_stalled_clients_are_dropped(slow_client_server: DicomvaultServer) -> None:
    server = slow_client_server
    pid = server_pid(server)

    # The baseline is taken after one of each kind of request, so that
    # threads started on first use (thread pools, the readiness checks) count in it.
    with association(server.port, server.ae_title) as assoc:
        assert c_store(assoc, mr_instance()) == SUCCESS
    assert stow(server, mr_instance()).status_code == 200
    wait_for_readiness(server, ready=True)
    baseline = thread_count(pid)

    stalled_assoc = idle_association(server.port, server.ae_title, "STALLSCU")
    idle_assoc = idle_association(server.port, server.ae_title, "IDLESCU")
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        silent = pool.submit(silent_connection, server.port)
        stalled = pool.submit(stalled_pdu, stalled_assoc)
        idle = pool.submit(seconds_until_ended, idle_assoc)
        http_body = pool.submit(stalled_http_body, server.http_port)

        # Another client is served while the stalled ones hold their connections.
        with association(server.port, server.ae_title, "BUSYSCU") as assoc:
            echoed = assoc.send_c_echo()
            status = c_store(assoc, mr_instance())
        served_while_stalled = not any(
            future.done() for future in (silent, stalled, idle, http_body)
        )
        threads_while_stalled = thread_count(pid)

        silent_seconds = silent.result()
        stalled_seconds = stalled.result()
        idle_seconds = idle.result()
        http_reply, http_seconds = http_body.result()

    assert echoed.Status == SUCCESS
    assert status == SUCCESS, format_status(status)
    assert served_while_stalled, "a stalled connection ended before the other client was served"
    # pynetdicom runs each DIMSE connection in a thread of its own.
    assert threads_while_stalled >= baseline + 3, (threads_while_stalled, baseline)
    LOGGER.info(
        "Closed after %.1f s (silent), %.1f s (stalled PDU), %.1f s (idle association), "
        "%.1f s (stalled HTTP body); threads: %d before, %d while stalled",
        silent_seconds,
        stalled_seconds,
        idle_seconds,
        http_seconds,
        baseline,
        threads_while_stalled,
    )

    # (a) A connection that sends no A-ASSOCIATE-RQ is closed after dimse.acse_timeout.
    assert (
        ACSE_TIMEOUT_SECONDS - 0.5 <= silent_seconds < ACSE_TIMEOUT_SECONDS + CLOSE_MARGIN_SECONDS
    )
    # (b) An association stalled inside a PDU is aborted after dimse.network_timeout.
    assert stalled_assoc.is_aborted
    assert (
        NETWORK_TIMEOUT_SECONDS - 0.5
        <= stalled_seconds
        < NETWORK_TIMEOUT_SECONDS + CLOSE_MARGIN_SECONDS
    )
    # (c) An established association that sends nothing ends after dimse.network_timeout.
    assert not idle_assoc.is_established
    assert (
        NETWORK_TIMEOUT_SECONDS - 0.5
        <= idle_seconds
        < NETWORK_TIMEOUT_SECONDS + CLOSE_MARGIN_SECONDS
    )
    # (d) An HTTP body that stalls gets 408 after http.read_timeout.
    assert http_reply.startswith(b"HTTP/1.1 408 "), http_reply[:200]
    assert (
        HTTP_READ_TIMEOUT_SECONDS - 0.5
        <= http_seconds
        < HTTP_READ_TIMEOUT_SECONDS + CLOSE_MARGIN_SECONDS
    )

    # The threads of the stalled connections end, and the server still stores.
    settled = wait_until(
        lambda: thread_count(pid) <= baseline + THREAD_SLACK, THREADS_SETTLE_SECONDS, interval=0.2
    )
    assert settled, f"{thread_count(pid)} threads, baseline {baseline}"
    LOGGER.info("Threads after the stalled clients: %d", thread_count(pid))
    with association(server.port, server.ae_title) as assoc:
        assert c_store(assoc, mr_instance()) == SUCCESS
    assert server_pid(server) == pid
