"""Two `serve` processes sharing one PostgreSQL index and one bucket.

Node A and node B listen on different ports and lock different data
directories, but use the same PostgreSQL database and the same bucket and
prefix on moto's S3 server. What goes in through one node must come out
through the other at once: no node may keep a copy of shared state in memory
that the other node's writes make stale.
"""

from __future__ import annotations

import concurrent.futures
import io
from collections.abc import Iterator
from typing import Any

import httpx
import pydicom
import pytest
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.integration.test_s3_storage import s3_config, store_corpus
from tests.support.corpus import dataset_offset, make_uid
from tests.support.dcmtk import echoscu, findscu
from tests.support.moto import MotoServer
from tests.support.network import LOOPBACK, wait_until
from tests.support.postgres import PostgresDatabases
from tests.support.retrieval_checks import (
    CORPUS,
    DESTINATION,
    DICOM_ANY_SYNTAX,
    TIMEOUT_SECONDS,
    MoveDestination,
    assert_received,
    instance_path,
    parse_multipart,
    storage_contexts,
    study_identifier,
)
from tests.support.server import DicomvaultServer

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

ADMIN_NAME = "clusteradmin"
ADMIN_PASSWORD = "cluster admin password"
FOLLOW_TIMEOUT_SECONDS = 20.0


@pytest.fixture(scope="module")
def index_backend() -> str:
    """PostgreSQL only: SQLite cannot be shared by processes on several machines."""
    return "postgres"


@pytest.fixture(scope="module")
def bucket(moto_server: MotoServer) -> str:
    return moto_server.new_bucket()


@pytest.fixture(scope="module")
def nodes(
    postgres_databases: PostgresDatabases,
    moto_server: MotoServer,
    bucket: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[DicomvaultServer, DicomvaultServer]]:
    """Start node A and node B at the same time on a new database; stop both at the end.

    Both nodes find an empty database and migrate it at once. Without the
    migration lock, the second failed creating a table the first had created.
    """
    index_url = postgres_databases.create()
    config = s3_config(moto_server, bucket) + "[server]\nsettings_poll_interval = 1.0\n"
    node_a = DicomvaultServer(tmp_path_factory.mktemp("node-a"), index_url, config=config)
    node_b = DicomvaultServer(tmp_path_factory.mktemp("node-b"), index_url, config=config)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        starts = [pool.submit(node.start) for node in (node_a, node_b)]
    try:
        for start in starts:
            start.result()
        node_a.add_user(ADMIN_NAME, ADMIN_PASSWORD)
        yield node_a, node_b
    finally:
        node_a.stop()
        node_b.stop()


@pytest.fixture(scope="module")
def node_a(nodes: tuple[DicomvaultServer, DicomvaultServer]) -> DicomvaultServer:
    return nodes[0]


@pytest.fixture(scope="module")
def node_b(nodes: tuple[DicomvaultServer, DicomvaultServer]) -> DicomvaultServer:
    return nodes[1]


@pytest.fixture(scope="module")
def stored_on_a(node_a: DicomvaultServer) -> None:
    """Store the corpus, one file per transfer syntax, through node A."""
    store_corpus(node_a, CORPUS)


def http_client(server: DicomvaultServer, **kwargs: Any) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://{LOOPBACK}:{server.http_port}", timeout=TIMEOUT_SECONDS, **kwargs
    )


def login(server: DicomvaultServer) -> tuple[httpx.Cookies, str]:
    """Log in to ``server`` as the admin; return the session cookies and the CSRF token."""
    with http_client(server) as client:
        response = client.post("/api/login", json={"name": ADMIN_NAME, "password": ADMIN_PASSWORD})
        assert response.status_code == 200, response.text
        return client.cookies, str(response.json()["csrf_token"])


def find_instances(server: DicomvaultServer, study_uid: str = "") -> set[str]:
    """Return the SOP Instance UIDs that a C-FIND at IMAGE level on ``server`` returns."""
    run = findscu(
        server.port,
        {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": study_uid, "SOPInstanceUID": ""},
        server.ae_title,
    )
    assert run.status == 0x0000, run.describe()
    return {str(ds.SOPInstanceUID) for ds in run.responses}


def stored_datasets(moto_server: MotoServer, bucket: str) -> dict[str, tuple[bytes, str]]:
    """Map the SOP Instance UID of each object in ``bucket`` to its dataset bytes and syntax."""
    datasets = {}
    client = moto_server.client()
    for name in moto_server.object_names(bucket):
        data = client.get_object(Bucket=bucket, Key=name)["Body"].read()
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        syntax = str(ds.file_meta.TransferSyntaxUID)
        datasets[str(ds.SOPInstanceUID)] = (data[dataset_offset(data) :], syntax)
    return datasets


def test_both_nodes_ready(node_a: DicomvaultServer, node_b: DicomvaultServer) -> None:
    for node in (node_a, node_b):
        with http_client(node) as client:
            response = client.get("/ready")
        assert response.status_code == 200, node.describe()
        assert "is at the newest schema revision" in node.log_text()
    assert node_a.data_dir != node_b.data_dir
    assert node_a.port != node_b.port


def test_c_find_on_b_after_store_on_a(stored_on_a: None, node_b: DicomvaultServer) -> None:
    assert find_instances(node_b) == {b.sop_instance_uid for b in CORPUS}


def test_c_move_on_b(
    stored_on_a: None,
    moto_server: MotoServer,
    bucket: str,
    node_a: DicomvaultServer,
    node_b: DicomvaultServer,
) -> None:
    with MoveDestination() as (port, received):
        cookies, csrf = login(node_a)
        with http_client(node_a, cookies=cookies, headers={"X-CSRF-Token": csrf}) as client:
            response = client.post(
                "/api/nodes", json={"ae_title": DESTINATION, "host": LOOPBACK, "port": port}
            )
        assert response.status_code == 201, response.text

        ae = AE(ae_title="MOVESCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_SECONDS
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate(LOOPBACK, node_b.port, ae_title=node_b.ae_title)
        assert assoc.is_established, node_b.describe()
        try:
            statuses = [
                status.Status
                for status, _ in assoc.send_c_move(
                    study_identifier(), DESTINATION, StudyRootQueryRetrieveInformationModelMove
                )
            ]
        finally:
            assoc.release()

    assert statuses[-1] == 0x0000, node_b.log_text()
    assert_received(received)
    in_bucket = stored_datasets(moto_server, bucket)
    # Sent in the stored syntax, a dataset goes out byte for byte as stored.
    unchanged = [uid for uid, (_, syntax) in received.items() if syntax == in_bucket[uid][1]]
    assert unchanged, received.keys()
    for sop_instance_uid in unchanged:
        assert received[sop_instance_uid][0] == in_bucket[sop_instance_uid][0], sop_instance_uid


def test_c_get_on_b(stored_on_a: None, node_b: DicomvaultServer) -> None:
    received: dict[str, tuple[bytes, str]] = {}

    def handle_store(event: Any) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = (
            event.request.DataSet.getvalue(),
            str(event.context.transfer_syntax),
        )
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_SECONDS
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for sop_class, syntax in storage_contexts():
        ae.add_requested_context(sop_class, [syntax])
        roles.append(build_role(sop_class, scp_role=True))
    assoc = ae.associate(
        LOOPBACK,
        node_b.port,
        ae_title=node_b.ae_title,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, handle_store)],
    )
    assert assoc.is_established, node_b.describe()
    try:
        statuses = [
            status.Status
            for status, _ in assoc.send_c_get(
                study_identifier(), StudyRootQueryRetrieveInformationModelGet
            )
        ]
    finally:
        assoc.release()

    assert statuses[-1] == 0x0000, node_b.log_text()
    assert_received(received)


def test_qido_and_wado_on_b(
    stored_on_a: None, moto_server: MotoServer, bucket: str, node_b: DicomvaultServer
) -> None:
    in_bucket = stored_datasets(moto_server, bucket)

    with http_client(node_b) as client:
        studies = client.get("/dicomweb/studies", params={"PatientID": "*"})
        assert studies.status_code == 200, studies.text
        found = {study["0020000D"]["Value"][0] for study in studies.json()}
        assert found == {b.study_instance_uid for b in CORPUS}

        for bundled in CORPUS:
            response = client.get(instance_path(bundled), headers={"Accept": DICOM_ANY_SYNTAX})
            assert response.status_code == 200, (bundled.name, response.text)
            (part,) = parse_multipart(response)
            stored, _ = in_bucket[bundled.sop_instance_uid]
            assert part[dataset_offset(part) :] == stored, bundled.name


def test_stow_on_b_then_c_find_on_a(node_a: DicomvaultServer, node_b: DicomvaultServer) -> None:
    ds = pydicom.dcmread(CORPUS[0].path)
    ds.SOPInstanceUID = make_uid("two-nodes", "stow")
    ds.StudyInstanceUID = make_uid("two-nodes", "stow-study")
    ds.SeriesInstanceUID = make_uid("two-nodes", "stow-series")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    boundary = "two-nodes-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + buffer.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )

    with http_client(node_b) as client:
        response = client.post(
            "/dicomweb/studies",
            content=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
            },
        )

    assert response.status_code == 200, response.text
    assert find_instances(node_a, str(ds.StudyInstanceUID)) == {str(ds.SOPInstanceUID)}


def test_session_from_a_works_on_b(node_a: DicomvaultServer, node_b: DicomvaultServer) -> None:
    cookies, csrf = login(node_a)

    with http_client(node_b, cookies=cookies, headers={"X-CSRF-Token": csrf}) as client:
        me = client.get("/api/me")
        token = client.post("/api/tokens", json={"name": "made on B"})

    assert me.status_code == 200, me.text
    assert me.json()["name"] == ADMIN_NAME
    assert me.json()["csrf_token"] == csrf
    assert token.status_code == 201, token.text


def test_token_from_a_deletes_on_b(
    stored_on_a: None,
    moto_server: MotoServer,
    bucket: str,
    node_a: DicomvaultServer,
    node_b: DicomvaultServer,
) -> None:
    bundled = CORPUS[0]
    cookies, csrf = login(node_a)
    with http_client(node_a, cookies=cookies, headers={"X-CSRF-Token": csrf}) as client:
        created = client.post("/api/tokens", json={"name": "made on A"})
    assert created.status_code == 201, created.text
    objects_before = len(moto_server.object_names(bucket))
    study_size = sum(1 for b in CORPUS if b.study_instance_uid == bundled.study_instance_uid)

    bearer = {"Authorization": f"Bearer {created.json()['token']}"}
    with http_client(node_b, headers=bearer) as client:
        response = client.delete(f"/api/studies/{bundled.study_instance_uid}")

    assert response.status_code == 200, response.text
    assert response.json()["removed_instances"] == study_size
    assert response.json()["deleted_files"] == study_size
    assert find_instances(node_a, bundled.study_instance_uid) == set()
    assert len(moto_server.object_names(bucket)) == objects_before - study_size


def echo_accepted(node: DicomvaultServer, calling_ae: str) -> bool:
    return echoscu(node.port, node.ae_title, calling_ae=calling_ae).returncode == 0


def test_dimse_setting_saved_on_a_applies_on_b(
    node_a: DicomvaultServer, node_b: DicomvaultServer
) -> None:
    cookies, csrf = login(node_a)
    with http_client(node_a, cookies=cookies, headers={"X-CSRF-Token": csrf}) as client:
        changed = client.patch("/api/dimse", json={"allowed_calling_ae_titles": ["FOLLOWER"]})
        try:
            assert changed.status_code == 200, changed.text
            # Node B reads the saved settings every second (settings_poll_interval).
            assert wait_until(lambda: not echo_accepted(node_b, "OTHER"), FOLLOW_TIMEOUT_SECONDS)
            assert echo_accepted(node_b, "FOLLOWER")
            with http_client(node_b, cookies=cookies, headers={"X-CSRF-Token": csrf}) as on_b:
                status = on_b.get("/api/dimse").json()
            assert status["allowed_calling_ae_titles"] == ["FOLLOWER"]
        finally:
            reset = client.delete("/api/dimse/saved")

    assert reset.status_code == 200, reset.text
    assert wait_until(lambda: echo_accepted(node_b, "OTHER"), FOLLOW_TIMEOUT_SECONDS)
    assert "Applied the DIMSE settings saved by another server" in node_b.log_text()
