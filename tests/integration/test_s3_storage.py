"""S3 storage with a real server: moto's S3-compatible server on loopback as the bucket.

The archive stores the bundled corpus with storescu into a bucket of
moto_server, and every service reads it back from there: C-FIND, C-GET,
C-MOVE, WADO-RS, frames, rendered images, zip downloads, STOW-RS, deletion,
usage figures and `dicomvault index --import`. Encryption at rest on top of
S3 has its own archive. SQLite is the index: S3 changes where files go, not
the index.
"""

from __future__ import annotations

import io
import os
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom import uid
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove,
)

from dicomvault.encryption.key_record import RECORD_NAME
from dicomvault.encryption.object_format import is_sealed
from tests.support.cli import run_cli
from tests.support.corpus import BundledFile, leftover_files, make_uid, write_instance
from tests.support.datasets import make_instance
from tests.support.dcmtk import findscu, storescu
from tests.support.moto import MotoServer
from tests.support.network import LOOPBACK, free_port
from tests.support.retrieval_checks import (
    CORPUS,
    DESTINATION,
    DICOM_ANY_SYNTAX,
    STORESCU_PROPOSALS,
    TIMEOUT_SECONDS,
    MoveDestination,
    RetrieveChecks,
    assert_received,
    assert_same_dataset,
    encryption_config,
    http_client,
    instance_path,
    new_key,
    parse_multipart,
    study_identifier,
)
from tests.support.scu import send_file_unchanged
from tests.support.server import DicomvaultServer, ServerFactory, ServerStartError

pytestmark = pytest.mark.integration

PREFIX = "archive/"


@pytest.fixture(scope="module")
def index_backend() -> str:
    """SQLite only: S3 changes where files go, not the index."""
    return "sqlite"


def s3_config(moto_server: MotoServer, bucket: str, *extra_lines: str) -> str:
    """Return the TOML that stores files in ``bucket`` of ``moto_server`` under PREFIX."""
    lines = [
        "[storage]",
        'backend = "s3"',
        f's3_bucket = "{bucket}"',
        f's3_prefix = "{PREFIX}"',
        f's3_endpoint_url = "{moto_server.endpoint_url}"',
        "s3_max_attempts = 2",
        *extra_lines,
    ]
    return "\n".join(lines) + "\n"


def store_corpus(server: DicomvaultServer, corpus: list[BundledFile]) -> None:
    by_syntax: dict[str, list[BundledFile]] = {}
    for bundled in corpus:
        by_syntax.setdefault(bundled.transfer_syntax_uid, []).append(bundled)
    for syntax, group in by_syntax.items():
        run = storescu(
            server.port,
            [b.path for b in group],
            server.ae_title,
            options=STORESCU_PROPOSALS[syntax],
        )
        for bundled in group:
            result = run.results[str(bundled.path)]
            assert result.sent and result.status == 0x0000, (bundled.name, run.run.describe())


@pytest.fixture(scope="module")
def bucket(moto_server: MotoServer) -> str:
    return moto_server.new_bucket()


@pytest.fixture(scope="module")
def import_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("import-root")


@pytest.fixture(scope="module")
def archive(
    start_module_server: ServerFactory, moto_server: MotoServer, bucket: str, import_root: Path
) -> DicomvaultServer:
    """An archive on S3 storage holding the corpus stored with storescu."""
    config = s3_config(moto_server, bucket) + f'[ingest]\nimport_roots = ["{import_root}"]\n'
    server = start_module_server(config=config)
    store_corpus(server, CORPUS)
    return server


@pytest.fixture(scope="module")
def admin(archive: DicomvaultServer) -> Iterator[httpx.Client]:
    """An HTTP client of the archive logged in as an admin."""
    with archive.admin_client() as client:
        yield client


def object_bytes(moto_server: MotoServer, bucket: str, name: str) -> bytes:
    body: bytes = moto_server.client().get_object(Bucket=bucket, Key=name)["Body"].read()
    return body


def test_files_go_to_bucket_only(
    archive: DicomvaultServer, moto_server: MotoServer, bucket: str
) -> None:
    names = moto_server.object_names(bucket)

    assert len(names) == len(CORPUS)
    assert all(name.startswith(PREFIX) and name.endswith(".dcm") for name in names)
    uids = set()
    for name in names:
        ds = pydicom.dcmread(io.BytesIO(object_bytes(moto_server, bucket, name)))
        uids.add(ds.SOPInstanceUID)
    assert uids == {b.sop_instance_uid for b in CORPUS}
    assert leftover_files(archive.data_dir) == []  # the index and the lock only
    assert f"storage S3 s3://{bucket}/{PREFIX} at {moto_server.endpoint_url}" in (
        archive.log_text()
    )


def test_c_find(archive: DicomvaultServer) -> None:
    run = findscu(
        archive.port,
        {"QueryRetrieveLevel": "IMAGE", "SOPInstanceUID": "", "StudyInstanceUID": ""},
        archive.ae_title,
    )

    assert run.status == 0x0000, run.describe()
    found = {str(ds.SOPInstanceUID) for ds in run.responses}
    assert found == {b.sop_instance_uid for b in CORPUS}


class TestRetrieve(RetrieveChecks):
    def test_c_move(self, archive: DicomvaultServer, tmp_path: Path) -> None:
        with MoveDestination() as (port, received):
            add_node = ["node", "add", DESTINATION, "--host", LOOPBACK, "--port", str(port)]
            assert archive.config_path is not None
            run = run_cli(
                [
                    *add_node,
                    "--data-dir",
                    str(archive.data_dir),
                    "--config",
                    str(archive.config_path),
                ],
                tmp_path,
            )
            assert run.returncode == 0, run.describe()
            ae = AE(ae_title="MOVESCU")
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_SECONDS
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            assoc = ae.associate(LOOPBACK, archive.port, ae_title=archive.ae_title)
            assert assoc.is_established, archive.describe()
            try:
                statuses = [
                    status.Status
                    for status, _ in assoc.send_c_move(
                        study_identifier(), DESTINATION, StudyRootQueryRetrieveInformationModelMove
                    )
                ]
            finally:
                assoc.release()

        assert statuses[-1] == 0x0000, archive.log_text()
        assert_received(received)

    def test_rendered_and_frames(self, archive: DicomvaultServer) -> None:
        with http_client(archive) as client:
            for bundled in CORPUS:
                # pydicom 3.0 decodes no frame of a deflated file from the file itself.
                if not bundled.transfer_syntax_uid.is_deflated:
                    rendered = client.get(instance_path(bundled) + "/rendered")
                    assert rendered.status_code == 200, (bundled.name, rendered.text)
                    assert rendered.headers["content-type"] == "image/jpeg"
                frames = client.get(
                    instance_path(bundled) + "/frames/1",
                    headers={"Accept": 'multipart/related; type="application/octet-stream"'},
                )
                assert frames.status_code == 200, (bundled.name, frames.text)

    def test_wado_uri(self, archive: DicomvaultServer) -> None:
        # WADO-URI sends Explicit VR Little Endian unless the request names another syntax.
        bundled = next(b for b in CORPUS if b.transfer_syntax_uid == uid.ExplicitVRLittleEndian)
        params = {
            "requestType": "WADO",
            "studyUID": bundled.study_instance_uid,
            "seriesUID": bundled.series_instance_uid,
            "objectUID": bundled.sop_instance_uid,
            "contentType": "application/dicom",
        }
        with http_client(archive) as client:
            response = client.get("/wado", params=params)

        assert response.status_code == 200, response.text
        assert_same_dataset(bundled, pydicom.dcmread(io.BytesIO(response.content)))

    def test_zip_download(self, admin: httpx.Client) -> None:
        bundled = CORPUS[0]
        response = admin.get(f"/api/studies/{bundled.study_instance_uid}/archive.zip")

        assert response.status_code == 200, response.text
        with zipfile.ZipFile(io.BytesIO(response.content)) as archive_zip:
            members = archive_zip.namelist()
            assert len(members) == 1
            assert_same_dataset(bundled, pydicom.dcmread(archive_zip.open(members[0])))


def test_stow_rs_and_deletion(
    archive: DicomvaultServer, admin: httpx.Client, moto_server: MotoServer, bucket: str
) -> None:
    source = pydicom.dcmread(CORPUS[1].path)
    source.StudyInstanceUID = make_uid("s3", "stow", "study")
    source.SeriesInstanceUID = make_uid("s3", "stow", "series")
    source.SOPInstanceUID = make_uid("s3", "stow", "instance")
    buffer = io.BytesIO()
    source.save_as(buffer, enforce_file_format=True)
    boundary = "s3-test-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + buffer.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    before = set(moto_server.object_names(bucket))

    with http_client(archive) as client:
        stored = client.post(
            "/dicomweb/studies",
            content=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
            },
        )
    assert stored.status_code == 200, stored.text
    added = set(moto_server.object_names(bucket)) - before
    assert len(added) == 1
    (name,) = added
    assert object_bytes(moto_server, bucket, name).endswith(buffer.getvalue()[-1000:])

    deleted = admin.delete(f"/api/studies/{source.StudyInstanceUID}")

    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted_files"] == 1
    assert set(moto_server.object_names(bucket)) == before


def test_usage_counts_bytes_without_free_space(
    admin: httpx.Client, moto_server: MotoServer, bucket: str
) -> None:
    client_s3 = moto_server.client()
    object_sizes = sum(
        client_s3.head_object(Bucket=bucket, Key=name)["ContentLength"]
        for name in moto_server.object_names(bucket)
    )

    response = admin.get("/api/usage")

    assert response.status_code == 200, response.text
    usage = response.json()
    assert usage["stored_bytes"] == object_sizes
    assert usage["storage_free_bytes"] is None


def test_import_copies_into_bucket(
    archive: DicomvaultServer,
    moto_server: MotoServer,
    bucket: str,
    import_root: Path,
    tmp_path: Path,
) -> None:
    folder = import_root / "incoming"
    datasets = [make_instance(), make_instance()]
    for number, ds in enumerate(datasets):
        write_instance(folder / f"{number}.dcm", ds)
    past = time.time() - 60  # older than ingest.settle_seconds
    for path in folder.iterdir():
        os.utime(path, (past, past))
    before = set(moto_server.object_names(bucket))
    assert archive.config_path is not None

    run = run_cli(
        [
            "index",
            str(folder),
            "--import",
            "--config",
            str(archive.config_path),
            "--data-dir",
            str(archive.data_dir),
        ],
        tmp_path,
    )

    assert run.returncode == 0, run.describe()
    added = set(moto_server.object_names(bucket)) - before
    assert len(added) == len(datasets)
    with http_client(archive) as client:
        for ds in datasets:
            path = (
                f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}"
            )
            response = client.get(path, headers={"Accept": DICOM_ANY_SYNTAX})
            assert response.status_code == 200, response.text
    assert not (archive.data_dir / "storage").exists()


def test_config_shows_s3_settings_without_credentials(
    moto_server: MotoServer, bucket: str, tmp_path: Path
) -> None:
    config = tmp_path / "dicomvault.toml"
    config.write_text(s3_config(moto_server, bucket), encoding="utf-8")
    secret = "not-a-real-secret-0123456789"

    run = run_cli(
        ["config", "--config", str(config), "--data-dir", str(tmp_path / "data")],
        tmp_path,
        env={"AWS_SECRET_ACCESS_KEY": secret},
    )

    assert run.returncode == 0, run.describe()
    assert 'storage.backend                    = "s3"' in run.output
    assert f'storage.s3_bucket                  = "{bucket}"' in run.output
    assert secret not in run.output


class TestStartChecks:
    def test_missing_bucket(self, start_server: ServerFactory, moto_server: MotoServer) -> None:
        with pytest.raises(ServerStartError) as excinfo:
            start_server(config=s3_config(moto_server, "no-such-bucket"))

        assert (
            f"Cannot use S3 bucket no-such-bucket at {moto_server.endpoint_url}: the bucket "
            "does not exist; create it or correct storage.s3_bucket"
        ) in str(excinfo.value)

    def test_unreachable_endpoint(self, start_server: ServerFactory, bucket: str) -> None:
        endpoint = f"http://{LOOPBACK}:{free_port()}"
        config = (
            f'[storage]\nbackend = "s3"\ns3_bucket = "{bucket}"\n'
            f's3_endpoint_url = "{endpoint}"\ns3_max_attempts = 1\n'
        )

        with pytest.raises(ServerStartError) as excinfo:
            start_server(config=config)

        message = str(excinfo.value)
        assert f"Cannot use S3 bucket {bucket} at {endpoint}: " in message
        assert "; check storage.s3_endpoint_url and the network" in message

    def test_s3_backend_without_bucket(self, start_server: ServerFactory) -> None:
        with pytest.raises(ServerStartError) as excinfo:
            start_server(config='[storage]\nbackend = "s3"\n')

        assert ("Invalid settings: 'storage.backend' (file ") in str(excinfo.value)
        assert "is s3, so 'storage.s3_bucket' is required" in str(excinfo.value)


def test_encryption_at_rest_on_s3(
    start_server: ServerFactory, moto_server: MotoServer, tmp_path: Path
) -> None:
    bucket = moto_server.new_bucket()
    key_file, key_id = new_key(tmp_path, "current.key")
    corpus = CORPUS[:3]
    config = s3_config(moto_server, bucket) + encryption_config(key_file)
    server = start_server(config=config)
    for bundled in corpus:
        assert send_file_unchanged(server.port, bundled.path, server.ae_title).status == 0x0000

    names = moto_server.object_names(bucket)
    assert PREFIX + RECORD_NAME in names
    stored = [name for name in names if name.endswith(".dcm")]
    assert len(stored) == len(corpus)
    patient_names = [str(pydicom.dcmread(b.path).PatientName).encode("latin-1") for b in corpus]
    for name in stored:
        content = object_bytes(moto_server, bucket, name)
        assert is_sealed(content), name
        assert b"DICM" not in content, name
        for patient_name in patient_names:
            assert patient_name not in content, (name, patient_name)
    with http_client(server) as client:
        for bundled in corpus:
            response = client.get(instance_path(bundled), headers={"Accept": DICOM_ANY_SYNTAX})
            assert response.status_code == 200, response.text
            (part,) = parse_multipart(response)
            assert_same_dataset(bundled, pydicom.dcmread(io.BytesIO(part)))
    server.stop()

    with pytest.raises(ServerStartError) as excinfo:
        start_server(config=s3_config(moto_server, bucket), data_dir=server.data_dir)
    assert (
        f"the stored files in s3://{bucket}/{PREFIX} are encrypted (the key record "
        f"s3://{bucket}/{PREFIX}{RECORD_NAME} lists their master keys)"
    ) in str(excinfo.value)
    assert key_id in object_bytes(moto_server, bucket, PREFIX + RECORD_NAME).decode()
