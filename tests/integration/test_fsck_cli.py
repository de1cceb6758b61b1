"""`dicomvault fsck`: report and repair through the command line, and its exit codes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from dicomvault.archive import Archive, StoreResult
from dicomvault.config import load_settings
from dicomvault.dicom.header import encode_file_meta
from dicomvault.index.database import open_index_engine
from dicomvault.storage.filesystem import FilesystemStorage
from dicomvault.storage.lock import lock_data_dir
from tests.support.cli import run_cli
from tests.support.datasets import encode_dataset, make_instance

pytestmark = pytest.mark.integration


def store_instances(data_dir: Path, count: int) -> tuple[FilesystemStorage, list[StoreResult]]:
    """Store ``count`` new instances in the default SQLite index and storage of ``data_dir``."""
    settings = load_settings(environ={}, overrides={"storage.data_dir": str(data_dir)})
    engine = open_index_engine(settings.index_url)
    storage = FilesystemStorage(data_dir / "storage")
    try:
        archive = Archive(settings, engine, storage)
        results = [
            archive.store(encode_dataset(make_instance()), ExplicitVRLittleEndian)
            for _ in range(count)
        ]
    finally:
        engine.dispose()
    return storage, results


def fsck(data_dir: Path, *options: str) -> tuple[int, str]:
    run = run_cli(["fsck", "--data-dir", str(data_dir), *options], data_dir.parent)
    return run.returncode, run.output


def test_clean_archive_exits_0(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store_instances(data_dir, 2)

    code, output = fsck(data_dir, "--verify-checksums")

    assert code == 0, output
    assert "Checked 2 indexed instances and 2 stored objects" in output
    assert "Verified 2 checksums" in output


def test_problems_reported_then_repaired(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    storage, results = store_instances(data_dir, 3)
    missing, corrupted = results[0], results[1]
    storage.path_for(missing.storage_key).unlink()
    path = storage.path_for(corrupted.storage_key)
    path.write_bytes(path.read_bytes()[:-1] + b"\xff")
    extra = make_instance()
    meta = encode_file_meta(extra.SOPClassUID, extra.SOPInstanceUID, ExplicitVRLittleEndian)
    storage.put("ee/ee/extra.dcm", [meta, encode_dataset(extra)])
    (storage.temp_dir / "left.part").write_bytes(b"partial")

    checked = fsck(data_dir, "--verify-checksums")
    repaired = fsck(data_dir, "--repair")
    after = fsck(data_dir)

    assert checked[0] == 1, checked[1]
    for line in ("missing: 1", "orphan: 1", "checksum-mismatch: 1", "temporary: 1"):
        assert line in checked[1]
    assert f"missing {missing.storage_key} {missing.sop_instance_uid}" in checked[1]
    assert repaired[0] == 0, repaired[1]
    assert "missing: 1 (1 repaired)" in repaired[1]
    assert "orphan: 1 (1 repaired)" in repaired[1]
    assert not (storage.temp_dir / "left.part").exists()
    assert after == (0, after[1]), after[1]
    assert "Checked 3 indexed instances and 3 stored objects" in after[1]


def test_repair_refused_while_locked(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store_instances(data_dir, 1)
    lock = lock_data_dir(data_dir)
    try:
        code, output = fsck(data_dir, "--repair")
        read_only_code, _ = fsck(data_dir)
    finally:
        lock.close()

    assert code == 2, output
    assert "is in use by another dicomvault process" in output
    assert "'fsck --repair' needs the archive to itself" in output
    assert read_only_code == 0


def test_unknown_option_exits_2(tmp_path: Path) -> None:
    code, output = fsck(tmp_path / "data", "--no-such-option")

    assert code == 2, output


def test_imported_files_verified(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    folder = tmp_path / "incoming"
    folder.mkdir()
    for number in range(3):
        ds = make_instance()
        meta = encode_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
        (folder / f"{number}.dcm").write_bytes(meta + encode_dataset(ds))
    past = time.time() - 60
    for path in folder.iterdir():
        os.utime(path, (past, past))
    imported = run_cli(
        ["index", str(folder), "--import", "--data-dir", str(data_dir)],
        tmp_path,
        env={"DICOMVAULT_INGEST_IMPORT_ROOTS": str(tmp_path)},
    )

    code, output = fsck(data_dir, "--verify-checksums")

    assert imported.returncode == 0, imported.describe()
    assert code == 0, output
    assert "Verified 3 checksums; 0 instances have no recorded checksum" in output
