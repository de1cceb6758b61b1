"""Encryption at rest with a real server: no clear text on disk, identical retrieval, key checks."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove,
)

from dicomvault.encryption.object_format import is_sealed
from tests.support.cli import run_cli
from tests.support.corpus import BundledFile, dataset_offset, make_uid
from tests.support.dcmtk import storescu
from tests.support.network import LOOPBACK
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
    original_dataset,
    parse_multipart,
    study_identifier,
)
from tests.support.scu import send_file_unchanged
from tests.support.server import DicomvaultServer, ServerFactory, ServerStartError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def index_backend() -> str:
    """SQLite only: encryption changes the stored files, not the index."""
    return "sqlite"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the master key of the module's archive, current.key."""
    folder = tmp_path_factory.mktemp("keys")
    new_key(folder, "current.key")
    return folder


@pytest.fixture(scope="module")
def archive(start_module_server: ServerFactory, keys: Path) -> DicomvaultServer:
    """An archive with encryption on, holding the corpus stored with storescu."""
    server = start_module_server(config=encryption_config(keys / "current.key"))
    by_syntax: dict[str, list[BundledFile]] = {}
    for bundled in CORPUS:
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
    return server


def test_corpus_covers_syntaxes() -> None:
    assert len(CORPUS) == len(STORESCU_PROPOSALS)


def test_no_clear_text_in_storage(archive: DicomvaultServer) -> None:
    files = [p for p in (archive.data_dir / "storage").rglob("*") if p.is_file()]
    stored = [p for p in files if p.suffix == ".dcm"]
    names: list[bytes] = []
    runs: list[bytes] = []
    for bundled in CORPUS:
        ds = pydicom.dcmread(bundled.path)
        name = str(ds.get("PatientName") or "").encode("latin-1")
        if len(name) >= 4:
            names.append(name)
        pixels = bytes(ds.PixelData)
        middle = len(pixels) // 2
        runs.append(pixels[middle : middle + 32])

    assert len(stored) == len(CORPUS)
    assert len(names) >= 4
    for path in files:
        content = path.read_bytes()
        if path.suffix == ".dcm":
            assert is_sealed(content), path
        assert b"DICM" not in content, path
        for name in names:
            assert name not in content, (path, name)
        for run in runs:
            assert run not in content, path


class TestRetrieve(RetrieveChecks):
    def test_wado_uri_as_stored(self, archive: DicomvaultServer) -> None:
        with http_client(archive) as client:
            for bundled in CORPUS:
                rs = client.get(instance_path(bundled), headers={"Accept": DICOM_ANY_SYNTAX})
                (stored,) = parse_multipart(rs)
                # storescu may have sent the file in another syntax than its own.
                syntax = pydicom.dcmread(io.BytesIO(stored)).file_meta.TransferSyntaxUID
                response = client.get(
                    "/wado",
                    params={
                        "requestType": "WADO",
                        "studyUID": bundled.study_instance_uid,
                        "seriesUID": bundled.series_instance_uid,
                        "objectUID": bundled.sop_instance_uid,
                        "contentType": "application/dicom",
                        "transferSyntax": str(syntax),
                    },
                )
                assert response.status_code == 200, response.text
                data = response.content
                assert data[dataset_offset(data) :] == stored[dataset_offset(stored) :]
                assert_same_dataset(bundled, pydicom.dcmread(io.BytesIO(data)))

    def test_c_move(self, archive: DicomvaultServer, tmp_path: Path) -> None:
        with MoveDestination() as (port, received):
            add_node = ["node", "add", DESTINATION, "--host", LOOPBACK, "--port", str(port)]
            run = run_cli([*add_node, "--data-dir", str(archive.data_dir)], tmp_path)
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
                # pydicom 3.0 decodes no frame of a deflated file from the file
                # itself, encrypted or not, so the archive cannot render it.
                if not bundled.transfer_syntax_uid.is_deflated:
                    rendered = client.get(instance_path(bundled) + "/rendered")
                    assert rendered.status_code == 200, (bundled.name, rendered.text)
                    assert rendered.headers["content-type"] == "image/jpeg"
                frames = client.get(
                    instance_path(bundled) + "/frames/1",
                    headers={"Accept": 'multipart/related; type="application/octet-stream"'},
                )
                assert frames.status_code == 200, (bundled.name, frames.text)

    def test_console_instance_page(self, archive: DicomvaultServer) -> None:
        bundled = CORPUS[0]
        name = str(pydicom.dcmread(bundled.path).PatientName)
        path = (
            f"/console/studies/{bundled.study_instance_uid}/series/"
            f"{bundled.series_instance_uid}/instances/{bundled.sop_instance_uid}"
        )

        with archive.admin_client() as client:
            page = client.get(path)
            image = client.get(path.replace("/console/", "/console/images/") + "/frames/1")

        assert page.status_code == 200
        assert name in page.text
        assert image.status_code == 200
        assert image.headers["content-type"].startswith("image/")


def test_stow_rs_stores_encrypted(archive: DicomvaultServer) -> None:
    source = pydicom.dcmread(CORPUS[1].path)
    source.PatientName = "STOW^ENCRYPTED^NAME"
    source.SOPInstanceUID = make_uid("encryption", "stow")
    buffer = io.BytesIO()
    source.save_as(buffer, enforce_file_format=True)
    boundary = "encryption-test-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + buffer.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )

    with http_client(archive) as client:
        response = client.post(
            "/dicomweb/studies",
            content=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
            },
        )

    assert response.status_code == 200, response.text
    for path in (archive.data_dir / "storage").rglob("*.dcm"):
        assert b"STOW^ENCRYPTED^NAME" not in path.read_bytes()


def test_config_shows_no_key_material(tmp_path: Path, keys: Path) -> None:
    secret = os.urandom(32).hex()
    env = {"DICOMVAULT_ENCRYPTION_ENABLED": "true", "DICOMVAULT_ENCRYPTION_KEY": secret}

    run = run_cli(["config", "--data-dir", str(tmp_path / "data")], tmp_path, env=env)

    assert run.returncode == 0, run.describe()
    assert "encryption.key                     = ********    # DICOMVAULT_ENCRYPTION_KEY" in (
        run.output
    )
    assert secret not in run.output
    assert secret.upper() not in run.output


def test_wrong_key_stops_and_rotation_keeps_files(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    old_key, old_id = new_key(tmp_path, "old.key")
    wrong_key, wrong_id = new_key(tmp_path, "wrong.key")
    stored = CORPUS[:3]
    first = start_server(config=encryption_config(old_key))
    for bundled in stored:
        assert send_file_unchanged(first.port, bundled.path, first.ae_title).status == 0x0000
    first.stop()
    data_dir = first.data_dir

    with pytest.raises(ServerStartError) as wrong:
        start_server(config=encryption_config(wrong_key), data_dir=data_dir)
    assert "exited with code 1 before accepting connections" in str(wrong.value)
    assert (
        f"The stored files in {data_dir / 'storage'} need master key {old_id}, and the "
        f"configured keys are {wrong_id}."
    ) in str(wrong.value)

    with pytest.raises(ServerStartError) as off:
        start_server(data_dir=data_dir)
    assert "Encryption is off (encryption.enabled is false), but the stored files" in str(off.value)

    new, new_id = new_key(tmp_path, "new.key")
    config = encryption_config(new, old_key)
    rotating = start_server(config=config, data_dir=data_dir)
    assert rotating.config_path is not None
    rotate = ["keys", "rotate", "--config", str(rotating.config_path), "--data-dir", str(data_dir)]
    run = run_cli(rotate, tmp_path)
    assert run.returncode == 0, run.describe()
    assert f"Rotating {len(stored)} stored files" in run.output
    assert f"{len(stored)} rewrapped, 0 encrypted again whole" in run.output
    assert f"Master keys no longer needed: {old_id}." in run.output
    rotating.stop()

    status = run_cli(
        ["keys", "status", "--config", str(rotating.config_path), "--data-dir", str(data_dir)],
        tmp_path,
    )
    assert f"  {new_id}: {len(stored)}" in status.output, status.describe()

    restarted = start_server(config=encryption_config(new), data_dir=data_dir)
    with http_client(restarted) as client:
        for bundled in stored:
            response = client.get(instance_path(bundled), headers={"Accept": DICOM_ANY_SYNTAX})
            assert response.status_code == 200, response.text
            (part,) = parse_multipart(response)
            assert part[dataset_offset(part) :] == original_dataset(bundled), bundled.name
