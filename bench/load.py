"""Load clients: many Storage SCU associations, C-FIND SCUs and QIDO-RS clients at once.

The clients run in worker processes, several threads each, so that the
GIL of one client process does not limit the load. One run goes through
these phases:

1. Every worker opens its associations (or HTTP clients) and reports how
   many it opened. The associations stay open, so the server then has
   ``storers + finders`` associations open.
2. The caller may now open more associations from its own process, to see
   the ones beyond ``dimse.max_associations`` rejected
   (:func:`probe_association_limit`).
3. :meth:`LoadRun.start` lets the workers go. Each storer sends small
   generated MR instances, each with a new SOP Instance UID, into a study
   of its own, until it has sent ``instances_per_association`` or the
   duration has passed. Each querier sends C-FIND or QIDO-RS study
   searches, with ``query_interval`` seconds between them, until the
   storers are done, the duration has passed or it has sent
   ``max_queries_per_client``.
4. :meth:`LoadRun.finish` collects what every worker measured: the status
   and the latency of every operation, measured by the client.

The test ``tests/integration/test_load.py`` and ``bench/load_bench.py``
both drive a server with this module. Every client talks to 127.0.0.1 only.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.synchronize
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from dicomvault.dimse.idle_wait import wait_when_idle

LOGGER = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
UID_PREFIX = "1.2.826.0.1.3680043.8.498."
PATIENT_ID_PREFIX = "LOAD-"
STORE_CALLING_AE = "LOADSTORE"
FIND_CALLING_AE = "LOADFIND"
PROBE_CALLING_AE = "LOADPROBE"
ACSE_TIMEOUT_SECONDS = 30
DIMSE_TIMEOUT_SECONDS = 60
HTTP_TIMEOUT_SECONDS = 60.0
PENDING_STATUSES = (0xFF00, 0xFF01)
SUCCESS = 0x0000
# A-ASSOCIATE-RJ result, source and reason that pynetdicom 3.0 sends when
# dimse.max_associations is reached: rejected-transient, DICOM UL
# service-provider (presentation related function), local-limit-exceeded.
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)
# How often a client association's DUL thread looks at its socket: pynetdicom's
# default while the client works, less often while it waits for the start.
ACTIVE_POLL_SECONDS = 0.001
IDLE_POLL_SECONDS = 0.05
# Rows and columns of the 16-bit pixel data of each generated instance (8 KiB).
IMAGE_SIZE = 64
# Extra seconds a worker waits for the start signal, and the caller for a
# report, beyond the run's own duration, before it gives up.
WAIT_MARGIN_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class LoadPlan:
    """The shape and the bounds of one load run against a server on 127.0.0.1.

    ``storers`` associations are spread over ``store_processes`` worker
    processes, and ``finders`` and ``qido_clients`` over
    ``query_processes`` each. ``duration`` (seconds, counted from
    :meth:`LoadRun.start`) bounds every client, and so do the counts.
    """

    port: int
    http_port: int
    ae_title: str
    storers: int = 100
    store_processes: int = 10
    instances_per_association: int = 5
    finders: int = 10
    qido_clients: int = 10
    query_processes: int = 2
    query_interval: float = 0.1
    max_queries_per_client: int = 10_000
    duration: float = 60.0
    qido_path: str = "/dicomweb/studies"


@dataclasses.dataclass
class OperationLog:
    """Measurements of the clients of one kind: a status and the seconds of each operation.

    ``statuses`` contains DIMSE statuses for C-STORE and C-FIND and HTTP
    status codes for QIDO-RS. A client error (no response, a timeout)
    counts under ``errors`` instead, with its message.
    """

    latencies: list[float] = dataclasses.field(default_factory=list)
    statuses: list[int] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)

    def extend(self, other: OperationLog) -> None:
        """Append the operations of ``other``."""
        self.latencies.extend(other.latencies)
        self.statuses.extend(other.statuses)
        self.errors.extend(other.errors)


@dataclasses.dataclass
class WorkerReport:
    """The report of one worker process: its kind, clients opened and operations.

    ``acknowledged`` maps each storer's Study Instance UID to the SOP
    Instance UIDs that got status 0x0000.
    """

    kind: str
    worker: int
    opened: int = 0
    open_errors: list[str] = dataclasses.field(default_factory=list)
    operations: OperationLog = dataclasses.field(default_factory=OperationLog)
    acknowledged: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    first_started: float | None = None
    last_finished: float | None = None


@dataclasses.dataclass
class LoadResult:
    """The reports of every worker of a run, merged per kind of client."""

    reports: list[WorkerReport]

    def of_kind(self, kind: str) -> list[WorkerReport]:
        """Return the reports of the workers of ``kind`` ("store", "find" or "qido")."""
        return [report for report in self.reports if report.kind == kind]

    def operations(self, kind: str) -> OperationLog:
        """Return the operations of every worker of ``kind``."""
        merged = OperationLog()
        for report in self.of_kind(kind):
            merged.extend(report.operations)
        return merged

    def opened(self, kind: str) -> int:
        """Return the associations or HTTP clients that the workers of ``kind`` opened."""
        return sum(report.opened for report in self.of_kind(kind))

    def acknowledged(self) -> dict[str, list[str]]:
        """Return the acknowledged SOP Instance UIDs per Study Instance UID."""
        merged: dict[str, list[str]] = {}
        for report in self.of_kind("store"):
            merged.update(report.acknowledged)
        return merged

    def store_seconds(self) -> float:
        """Return the seconds from the first C-STORE request to the last response."""
        reports = self.of_kind("store")
        starts = [r.first_started for r in reports if r.first_started is not None]
        ends = [r.last_finished for r in reports if r.last_finished is not None]
        if not starts or not ends:
            return 0.0
        return max(ends) - min(starts)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the ``fraction`` (0 to 1) percentile of ``values``, by linear interpolation.

    Raises
    ------
    ValueError
        If ``values`` is empty.
    """
    if not values:
        raise ValueError("no values to take a percentile of")
    return float(np.percentile(np.asarray(values, dtype=float), fraction * 100))


def make_load_instance(study_uid: str, series_uid: str, patient_id: str, number: int) -> Dataset:
    """Build a small MR instance with a new SOP Instance UID and 64 x 64 16-bit pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid(prefix=UID_PREFIX)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = "LOAD^TEST"
    ds.StudyDate = "20261205"
    ds.Modality = "MR"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.Rows = IMAGE_SIZE
    ds.Columns = IMAGE_SIZE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    pixels = (np.arange(IMAGE_SIZE * IMAGE_SIZE, dtype=np.uint16) + number) % 4096
    ds.PixelData = pixels.tobytes()
    return ds


def patient_id(worker: int, client: int) -> str:
    """Return the Patient ID of the study that storer ``client`` of ``worker`` fills."""
    return f"{PATIENT_ID_PREFIX}{worker:03d}-{client:03d}"


def study_identifier(patient: str) -> Dataset:
    """Build a STUDY level C-FIND identifier matching one Patient ID."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = patient
    ds.StudyInstanceUID = ""
    ds.NumberOfStudyRelatedInstances = ""
    return ds


def open_association(port: int, called_ae: str, calling_ae: str, context: str) -> Any:
    """Request an association with one presentation context; return pynetdicom's Association.

    The caller checks ``is_established`` or ``is_rejected``. Nagle's
    algorithm is turned off on an established association, because
    pynetdicom leaves it on and each request is two writes. The
    association's threads wait for the socket instead of polling it while
    a response is awaited (:func:`wait_when_idle`, which the server uses
    too), so that a hundred client associations do not take the cores the
    server needs.
    """
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ACSE_TIMEOUT_SECONDS
    ae.dimse_timeout = DIMSE_TIMEOUT_SECONDS
    ae.network_timeout = DIMSE_TIMEOUT_SECONDS
    ae.add_requested_context(context, ExplicitVRLittleEndian)
    assoc = ae.associate(LOOPBACK, port, ae_title=called_ae)
    if assoc.is_established:
        transport = assoc.dul.socket
        if transport is not None and transport.socket is not None:
            transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wait_when_idle(assoc)
    return assoc


def quiet_while_idle(assoc: Any) -> None:
    """Stop a requestor association's threads from polling every millisecond while it waits.

    pynetdicom 3.0 runs two threads per association that each wake once a
    millisecond. A hundred idle client associations then take most of a
    core, which would starve the server on a small machine. This pauses
    the association's reactor, as ``send_c_store`` does during a request,
    and makes the DUL thread look at the socket every IDLE_POLL_SECONDS.
    :func:`wake` undoes both.
    """
    assoc._reactor_checkpoint.clear()
    deadline = time.monotonic() + ACSE_TIMEOUT_SECONDS
    while not assoc._is_paused and assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.001)
    assoc.dul._run_loop_delay = IDLE_POLL_SECONDS


def wake(assoc: Any) -> None:
    """Undo :func:`quiet_while_idle`: poll at pynetdicom's default rate and resume the reactor."""
    assoc.dul._run_loop_delay = ACTIVE_POLL_SECONDS
    assoc._reactor_checkpoint.set()


def describe_rejection(assoc: Any) -> tuple[int, int, int] | None:
    """Return (result, source, reason) of an A-ASSOCIATE-RJ, or None if none was received."""
    primitive = getattr(assoc.acceptor, "primitive", None)
    if not assoc.is_rejected or primitive is None:
        return None
    return (int(primitive.result), int(primitive.result_source), int(primitive.diagnostic))


def probe_association_limit(port: int, called_ae: str, attempts: int) -> list[str]:
    """Request ``attempts`` associations one after another; return the outcome of each.

    An outcome is "rejected-local-limit" for an A-ASSOCIATE-RJ with
    rejected-transient, service-provider (presentation), local-limit-exceeded;
    "accepted" (the association is then released at once); or
    "rejected r/s/d" or "no response" otherwise.
    """
    outcomes = []
    for _ in range(attempts):
        assoc = open_association(
            port, called_ae, PROBE_CALLING_AE, StudyRootQueryRetrieveInformationModelFind
        )
        if assoc.is_established:
            assoc.release()
            outcomes.append("accepted")
            continue
        rejection = describe_rejection(assoc)
        if rejection == LOCAL_LIMIT_EXCEEDED:
            outcomes.append("rejected-local-limit")
        elif rejection is not None:
            outcomes.append("rejected {}/{}/{}".format(*rejection))
        else:
            outcomes.append("no response")
    return outcomes


@dataclasses.dataclass
class Signals:
    """The events shared by the caller and the workers of one run."""

    start: multiprocessing.synchronize.Event
    storers_done: multiprocessing.synchronize.Event


class ClientRecorder:
    """The operations of the threads of one worker, recorded under a lock."""

    def __init__(self, report: WorkerReport) -> None:
        self.report = report
        self._lock = threading.Lock()

    def record(self, started: float, finished: float, status: int | None, error: str = "") -> None:
        """Record one operation: its status, or an error message when no status came."""
        with self._lock:
            operations = self.report.operations
            if status is None:
                operations.errors.append(error or "no response")
            else:
                operations.statuses.append(status)
                operations.latencies.append(finished - started)
            if self.report.first_started is None or started < self.report.first_started:
                self.report.first_started = started
            if self.report.last_finished is None or finished > self.report.last_finished:
                self.report.last_finished = finished

    def acknowledge(self, study_uid: str, sop_instance_uid: str) -> None:
        """Record that ``sop_instance_uid`` of ``study_uid`` got status 0x0000."""
        with self._lock:
            self.report.acknowledged.setdefault(study_uid, []).append(sop_instance_uid)


def _store_loop(
    assoc: Any,
    plan: LoadPlan,
    worker: int,
    client: int,
    deadline: float,
    recorder: ClientRecorder,
) -> None:
    study_uid = generate_uid(prefix=UID_PREFIX)
    series_uid = generate_uid(prefix=UID_PREFIX)
    patient = patient_id(worker, client)
    try:
        for number in range(1, plan.instances_per_association + 1):
            if time.monotonic() >= deadline:
                break
            ds = make_load_instance(study_uid, series_uid, patient, number)
            started = time.monotonic()
            try:
                response = assoc.send_c_store(ds)
            except RuntimeError as exc:  # pynetdicom raises it when the association has ended
                recorder.record(started, time.monotonic(), None, repr(exc))
                break
            finished = time.monotonic()
            status = int(response.Status) if "Status" in response else None
            recorder.record(
                started, finished, status, "C-STORE got no response within the DIMSE timeout"
            )
            if status == SUCCESS:
                recorder.acknowledge(study_uid, str(ds.SOPInstanceUID))
            if not assoc.is_established:
                break  # pynetdicom aborts the association when a response times out
    finally:
        if assoc.is_established:
            assoc.release()


def _find_once(assoc: Any, identifier: Dataset) -> int | None:
    status = None
    for response, _ in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
        if "Status" not in response:
            return None
        status = int(response.Status)
        if status not in PENDING_STATUSES:
            break
    return status


def _query_loop(
    query: Callable[[str], int | None],
    plan: LoadPlan,
    client: int,
    signals: Signals,
    deadline: float,
    recorder: ClientRecorder,
) -> None:
    patients = [
        patient_id(worker, number)
        for worker in range(plan.store_processes)
        for number in range(-(-plan.storers // plan.store_processes))
    ]
    for count in range(plan.max_queries_per_client):
        if signals.storers_done.is_set() or time.monotonic() >= deadline:
            break
        patient = patients[(client * 7 + count) % len(patients)]
        started = time.monotonic()
        try:
            status = query(patient)
            error = "no final response"
        except (httpx.HTTPError, OSError, RuntimeError) as exc:
            status, error = None, repr(exc)
        recorder.record(started, time.monotonic(), status, error)
        signals.storers_done.wait(plan.query_interval)


def _recording_errors(target: Callable[[], None], recorder: ClientRecorder) -> None:
    # A client that fails in an unforeseen way must show in the report, not
    # only as a traceback on the worker's standard error.
    try:
        target()
    except Exception as exc:
        now = time.monotonic()
        recorder.record(now, now, None, f"client failed: {exc!r}")
        LOGGER.exception("Load client %s failed", threading.current_thread().name)


def _clients_of(plan: LoadPlan, kind: str, worker: int) -> int:
    total, processes = {
        "store": (plan.storers, plan.store_processes),
        "find": (plan.finders, plan.query_processes),
        "qido": (plan.qido_clients, plan.query_processes),
    }[kind]
    share, extra = divmod(total, processes)
    return share + (1 if worker < extra else 0)


def run_worker(
    kind: str,
    worker: int,
    plan: LoadPlan,
    signals: Signals,
    ready: multiprocessing.Queue[tuple[str, int, int, list[str]]],
    reports: multiprocessing.Queue[WorkerReport],
) -> None:
    """Open this worker's clients, report them ready, then run them once the start is given.

    Runs in a worker process. ``kind`` is "store", "find" or "qido". The
    report goes to ``reports`` even when some clients failed to open.
    """
    report = WorkerReport(kind, worker)
    recorder = ClientRecorder(report)
    clients: list[Any] = []
    for _ in range(_clients_of(plan, kind, worker)):
        if kind == "qido":
            clients.append(
                httpx.Client(
                    base_url=f"http://{LOOPBACK}:{plan.http_port}", timeout=HTTP_TIMEOUT_SECONDS
                )
            )
            continue
        calling_ae, context = (
            (STORE_CALLING_AE, MRImageStorage)
            if kind == "store"
            else (FIND_CALLING_AE, StudyRootQueryRetrieveInformationModelFind)
        )
        assoc = open_association(plan.port, plan.ae_title, calling_ae, context)
        if assoc.is_established:
            quiet_while_idle(assoc)
            clients.append(assoc)
        else:
            report.open_errors.append(f"association not accepted: {describe_rejection(assoc)}")
    report.opened = len(clients)
    ready.put((kind, worker, report.opened, report.open_errors))

    if not signals.start.wait(plan.duration + WAIT_MARGIN_SECONDS):
        report.open_errors.append("the start signal did not come")
        clients = []
    deadline = time.monotonic() + plan.duration
    for client in clients:
        if kind != "qido":
            wake(client)
    threads = []
    for number, client in enumerate(clients):
        target: Callable[[], None]
        if kind == "store":

            def target(assoc: Any = client, index: int = number) -> None:
                _store_loop(assoc, plan, worker, index, deadline, recorder)

        elif kind == "find":

            def target(assoc: Any = client, index: int = number) -> None:
                def query(patient: str) -> int | None:
                    return _find_once(assoc, study_identifier(patient))

                try:
                    _query_loop(query, plan, worker * 100 + index, signals, deadline, recorder)
                finally:
                    if assoc.is_established:
                        assoc.release()

        else:

            def target(http: httpx.Client = client, index: int = number) -> None:
                def query(patient: str) -> int | None:
                    response = http.get(
                        plan.qido_path,
                        params={"PatientID": patient},
                        headers={"Accept": "application/dicom+json"},
                    )
                    return response.status_code

                try:
                    _query_loop(query, plan, worker * 100 + index, signals, deadline, recorder)
                finally:
                    http.close()

        thread = threading.Thread(
            target=_recording_errors, args=(target, recorder), name=f"{kind}-{worker}-{number}"
        )
        thread.daemon = True
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + WAIT_MARGIN_SECONDS)
        if thread.is_alive():
            report.open_errors.append(f"{thread.name} did not finish in time")
    reports.put(report)


class LoadRun:
    """The worker processes of one run; use as a context manager, which ends them all.

    Workers are started with the "spawn" method, so they share no state with
    the caller beyond the queues and events passed to them.
    """

    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        context = multiprocessing.get_context("spawn")
        self.signals = Signals(context.Event(), context.Event())
        self.ready: multiprocessing.Queue[tuple[str, int, int, list[str]]] = context.Queue()
        self.reports: multiprocessing.Queue[WorkerReport] = context.Queue()
        self.processes: list[SpawnProcess] = []
        self.started_at: float | None = None
        kinds = [("store", plan.store_processes)]
        kinds += [("find", plan.query_processes), ("qido", plan.query_processes)]
        for kind, count in kinds:
            for worker in range(count):
                process = context.Process(
                    target=run_worker,
                    args=(kind, worker, plan, self.signals, self.ready, self.reports),
                    name=f"load-{kind}-{worker}",
                    daemon=True,
                )
                self.processes.append(process)
        self.kinds = {process.name: process for process in self.processes}

    def __enter__(self) -> LoadRun:
        for process in self.processes:
            process.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.signals.start.set()
        self.signals.storers_done.set()
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                LOGGER.warning("Load worker %s did not exit; terminating it", process.name)
                process.terminate()
                process.join(timeout=5)

    def wait_opened(self, timeout: float) -> dict[str, int]:
        """Wait until every worker has opened its clients; return the clients opened per kind.

        Raises
        ------
        TimeoutError
            If some worker did not report within ``timeout`` seconds.
        """
        opened = {"store": 0, "find": 0, "qido": 0}
        deadline = time.monotonic() + timeout
        for _ in self.processes:
            try:
                kind, worker, count, errors = self.ready.get(
                    timeout=max(0.1, deadline - time.monotonic())
                )
            except queue.Empty:
                raise TimeoutError(
                    f"load workers did not open their clients within {timeout:.0f} s"
                ) from None
            opened[kind] += count
            for error in errors:
                LOGGER.warning("Load worker %s-%d: %s", kind, worker, error)
        LOGGER.info(
            "Load workers opened %s in %.1f s", opened, timeout - (deadline - time.monotonic())
        )
        return opened

    def start(self) -> None:
        """Let every worker start its operations."""
        self.started_at = time.monotonic()
        self.signals.start.set()

    def finish(self) -> LoadResult:
        """Wait for every report, telling the queriers to stop once every storer has reported.

        Raises
        ------
        TimeoutError
            If a worker does not report within the duration plus WAIT_MARGIN_SECONDS.
        """
        deadline = time.monotonic() + self.plan.duration + 2 * WAIT_MARGIN_SECONDS
        reports: list[WorkerReport] = []
        stores_left = self.plan.store_processes
        while len(reports) < len(self.processes):
            try:
                report = self.reports.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(
                    f"{len(self.processes) - len(reports)} load workers sent no report"
                ) from None
            reports.append(report)
            if report.kind == "store":
                stores_left -= 1
                if stores_left == 0:
                    self.signals.storers_done.set()
        if self.started_at is not None:
            LOGGER.info(
                "Load workers finished %.1f s after the start", time.monotonic() - self.started_at
            )
        return LoadResult(reports)


def read_rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Return a memory field of /proc/PID/status ("VmRSS", "VmHWM") in KiB.

    Raises
    ------
    FileNotFoundError
        If the process has exited.
    ValueError
        If the file has no such field.
    """
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise ValueError(f"/proc/{pid}/status has no {field} line")


class MemorySampler:
    """Reads the VmRSS of one process every ``interval`` seconds in a thread, until stopped."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.samples_kib: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self.samples_kib.append(read_rss_kib(self.pid))
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.samples_kib.append(read_rss_kib(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples_kib.append(read_rss_kib(self.pid))
            except (FileNotFoundError, ValueError):
                return  # the server exited; the caller sees that on its own
