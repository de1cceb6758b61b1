"""Encryption at rest under AWS KMS keys, with moto's KMS server on loopback in place of AWS.

A real archive seals what storescu, STOW-RS and `dicomvault index --import`
(in worker processes) store under a KMS key, on S3 storage in moto and on
the filesystem, and reads it back unchanged. Rotation moves the files from
one KMS key to another, on the filesystem and on S3 storage, and a
disabled key stops the server at start-up.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pydicom
import pytest

from dicomvault.encryption.key_record import RECORD_NAME
from dicomvault.encryption.object_format import ObjectHeader, is_sealed
from tests.support.cli import run_cli
from tests.support.corpus import BundledFile, make_uid, write_instance
from tests.support.datasets import make_instance
from tests.support.moto import PREFIX, MotoServer, kms_encryption_config
from tests.support.retrieval_checks import (
    CORPUS,
    DICOM_ANY_SYNTAX,
    assert_same_dataset,
    http_client,
    instance_path,
    parse_multipart,
)
from tests.support.scu import send_file_unchanged
from tests.support.server import DicomvaultServer, ServerFactory, ServerStartError

pytestmark = pytest.mark.integration

STORED = CORPUS[:3]


@pytest.fixture(scope="module")
def index_backend() -> str:
    """SQLite only: the key provider changes the stored files, not the index."""
    return "sqlite"


def s3_config(moto_server: MotoServer, bucket: str) -> str:
    """Return the TOML that stores files in ``bucket`` of ``moto_server`` under PREFIX."""
    return (
        f'[storage]\nbackend = "s3"\ns3_bucket = "{bucket}"\ns3_prefix = "{PREFIX}"\n'
        f's3_endpoint_url = "{moto_server.endpoint_url}"\ns3_max_attempts = 2\n'
    )


def header_key_ids(content: bytes) -> list[str]:
    header = ObjectHeader.read(io.BytesIO(content), "test")
    return [slot.key_id for slot in header.slots if slot is not None]


def object_bytes(moto_server: MotoServer, bucket: str, name: str) -> bytes:
    body: bytes = moto_server.client().get_object(Bucket=bucket, Key=name)["Body"].read()
    return body


def assert_retrievable(server: DicomvaultServer, corpus: list[BundledFile]) -> None:
    with http_client(server) as client:
        for bundled in corpus:
            response = client.get(instance_path(bundled), headers={"Accept": DICOM_ANY_SYNTAX})
            assert response.status_code == 200, (bundled.name, response.text)
            (part,) = parse_multipart(response)
            assert_same_dataset(bundled, pydicom.dcmread(io.BytesIO(part)))


@pytest.fixture(scope="module")
def key_arn(moto_server: MotoServer) -> str:
    return moto_server.new_kms_key()


@pytest.fixture(scope="module")
def bucket(moto_server: MotoServer) -> str:
    return moto_server.new_bucket()


@pytest.fixture(scope="module")
def import_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("import-root")


@pytest.fixture(scope="module")
def archive(
    start_module_server: ServerFactory,
    moto_server: MotoServer,
    bucket: str,
    key_arn: str,
    import_root: Path,
) -> DicomvaultServer:
    """An archive on S3 storage in moto, encrypting under a KMS key of moto, with STORED."""
    config = (
        s3_config(moto_server, bucket)
        + kms_encryption_config(moto_server, key_arn)
        + f'[ingest]\nimport_roots = ["{import_root}"]\n'
    )
    server = start_module_server(config=config)
    for bundled in STORED:
        assert send_file_unchanged(server.port, bundled.path, server.ae_title).status == 0x0000
    return server


def test_c_store_sealed_under_kms_key(
    archive: DicomvaultServer, moto_server: MotoServer, bucket: str, key_arn: str
) -> None:
    names = moto_server.object_names(bucket)
    stored = [name for name in names if name.endswith(".dcm")]

    assert PREFIX + RECORD_NAME in names
    assert len(stored) >= len(STORED)
    for name in stored:
        content = object_bytes(moto_server, bucket, name)
        assert is_sealed(content), name
        assert header_key_ids(content) == [key_arn], name
        assert b"DICM" not in content, name
    record = object_bytes(moto_server, bucket, PREFIX + RECORD_NAME).decode()
    assert key_arn in record
    assert f"Master keys: KMS key {key_arn} and 0 earlier keys at" in archive.log_text()
    assert_retrievable(archive, STORED)


def test_stow_rs_sealed_under_kms_key(
    archive: DicomvaultServer, moto_server: MotoServer, bucket: str, key_arn: str
) -> None:
    source = pydicom.dcmread(CORPUS[1].path)
    source.PatientName = "STOW^KMS^NAME"
    source.SOPInstanceUID = make_uid("kms", "stow")
    buffer = io.BytesIO()
    source.save_as(buffer, enforce_file_format=True)
    boundary = "kms-test-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + buffer.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    before = set(moto_server.object_names(bucket))

    with http_client(archive) as client:
        response = client.post(
            "/dicomweb/studies",
            content=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
            },
        )

    assert response.status_code == 200, response.text
    (name,) = set(moto_server.object_names(bucket)) - before
    content = object_bytes(moto_server, bucket, name)
    assert header_key_ids(content) == [key_arn]
    assert b"STOW^KMS^NAME" not in content


def test_import_in_workers_sealed_under_kms_key(
    archive: DicomvaultServer,
    moto_server: MotoServer,
    bucket: str,
    key_arn: str,
    import_root: Path,
    tmp_path: Path,
) -> None:
    folder = import_root / "incoming"
    datasets = [make_instance(), make_instance(), make_instance()]
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
    for name in added:
        assert header_key_ids(object_bytes(moto_server, bucket, name)) == [key_arn], name
    with http_client(archive) as client:
        for ds in datasets:
            path = (
                f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}"
            )
            response = client.get(path, headers={"Accept": DICOM_ANY_SYNTAX})
            assert response.status_code == 200, response.text
            (part,) = parse_multipart(response)
            assert pydicom.dcmread(io.BytesIO(part)).SOPInstanceUID == ds.SOPInstanceUID


def test_rotation_between_kms_keys(
    start_server: ServerFactory, moto_server: MotoServer, tmp_path: Path
) -> None:
    old_arn = moto_server.new_kms_key()
    first = start_server(config=kms_encryption_config(moto_server, old_arn))
    for bundled in STORED:
        assert send_file_unchanged(first.port, bundled.path, first.ae_title).status == 0x0000
    first.stop()
    data_dir = first.data_dir

    new_arn = moto_server.new_kms_key()
    with pytest.raises(ServerStartError) as wrong:
        start_server(config=kms_encryption_config(moto_server, new_arn), data_dir=data_dir)
    assert (
        f"The stored files in {data_dir / 'storage'} need master key {old_arn}, and the "
        f"configured keys are {new_arn}. Set encryption.kms_key_id to the archive's key; "
        "while keys are being rotated, list the earlier key in encryption.kms_previous_key_ids"
    ) in str(wrong.value)

    rotating = start_server(
        config=kms_encryption_config(moto_server, new_arn, old_arn), data_dir=data_dir
    )
    assert rotating.config_path is not None
    options = ["--config", str(rotating.config_path), "--data-dir", str(data_dir)]
    run = run_cli(["keys", "rotate", *options], tmp_path)
    assert run.returncode == 0, run.describe()
    assert f"{len(STORED)} rewrapped, 0 encrypted again whole" in run.output
    assert (
        f"Master keys no longer needed: {old_arn}. Remove them from "
        "encryption.kms_previous_key_ids before the next start"
    ) in run.output
    rotating.stop()

    status = run_cli(["keys", "status", *options], tmp_path)
    assert status.returncode == 0, status.describe()
    assert f"Encryption: on; current master key {new_arn}" in status.output
    assert f"Earlier master key: {old_arn}" in status.output
    assert f"Key provider: KMS key {new_arn} and 1 earlier key at" in status.output
    assert f"  {new_arn}: {len(STORED)}" in status.output

    restarted = start_server(config=kms_encryption_config(moto_server, new_arn), data_dir=data_dir)
    assert_retrievable(restarted, STORED)


def test_disabled_key_stops_start(
    start_server: ServerFactory, moto_server: MotoServer, tmp_path: Path
) -> None:
    arn = moto_server.new_kms_key()
    moto_server.disable_kms_key(arn)

    with pytest.raises(ServerStartError) as excinfo:
        start_server(config=kms_encryption_config(moto_server, arn))

    message = str(excinfo.value)
    assert "exited with code 1 before accepting connections" in message
    assert (
        f"KMS key {arn} (encryption.kms_key_id) is disabled, so it cannot wrap or unwrap "
        f"data keys; enable it ('aws kms enable-key --key-id {arn}')"
    ) in message


def test_keys_status_with_missing_key(moto_server: MotoServer, tmp_path: Path) -> None:
    config = tmp_path / "dicomvault.toml"
    config.write_text(kms_encryption_config(moto_server, "alias/no-such-key"), encoding="utf-8")
    (tmp_path / "data" / "storage").mkdir(parents=True)

    run = run_cli(
        ["keys", "status", "--config", str(config), "--data-dir", str(tmp_path / "data")],
        tmp_path,
    )

    assert run.returncode == 0, run.describe()
    assert (
        "Encryption: on, but the keys cannot be read: KMS key alias/no-such-key "
        "(encryption.kms_key_id) not found in region"
    ) in run.output


def test_rotation_on_s3_storage(
    start_server: ServerFactory, moto_server: MotoServer, tmp_path: Path
) -> None:
    bucket = moto_server.new_bucket()
    old_arn = moto_server.new_kms_key()
    new_arn = moto_server.new_kms_key()
    first = start_server(
        config=s3_config(moto_server, bucket) + kms_encryption_config(moto_server, old_arn)
    )
    for bundled in STORED:
        assert send_file_unchanged(first.port, bundled.path, first.ae_title).status == 0x0000
    first.stop()
    config = tmp_path / "rotate.toml"
    config.write_text(
        s3_config(moto_server, bucket) + kms_encryption_config(moto_server, new_arn, old_arn),
        encoding="utf-8",
    )
    options = ["--config", str(config), "--data-dir", str(tmp_path / "cli-data")]

    early = run_cli(["keys", "rotate", *options], tmp_path)

    assert early.returncode == 1, early.describe()
    assert (
        f"The node that started last on this bucket seals new files under master key "
        f"{old_arn}, but encryption.kms_key_id names master key {new_arn}. Restart every node"
    ) in early.output

    rotating = start_server(config=config.read_text(encoding="utf-8"), data_dir=first.data_dir)
    run = run_cli(["keys", "rotate", *options], tmp_path)
    again = run_cli(["keys", "rotate", *options], tmp_path)
    rotating.stop()

    assert run.returncode == 0, run.describe()
    assert f"Rotating {len(STORED)} stored files in s3://{bucket}/{PREFIX}" in run.output
    assert f"{len(STORED)} rewrapped, 0 encrypted again whole" in run.output
    assert f"Master keys no longer needed: {old_arn}." in run.output
    assert again.returncode == 0, again.describe()
    assert f"0 rewrapped, 0 encrypted again whole, {len(STORED)} already current" in again.output
    names = [n for n in moto_server.object_names(bucket) if not n.endswith(RECORD_NAME)]
    assert len(names) == len(STORED)
    for name in names:
        assert header_key_ids(object_bytes(moto_server, bucket, name)) == [new_arn], name

    status = run_cli(["keys", "status", *options], tmp_path)

    assert status.returncode == 0, status.describe()
    assert f"Stored files in s3://{bucket}/{PREFIX}: {len(STORED)}" in status.output
    assert f"  {new_arn}: {len(STORED)}" in status.output
    restarted = start_server(
        config=s3_config(moto_server, bucket) + kms_encryption_config(moto_server, new_arn),
        data_dir=first.data_dir,
    )
    assert_retrievable(restarted, STORED)
