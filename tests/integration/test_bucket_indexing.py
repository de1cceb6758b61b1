"""`dicomvault index s3://...`: objects uploaded to a bucket, indexed as a folder would be.

moto's S3-compatible server stands in for the bucket. The same files are
uploaded to a bucket prefix and copied to a folder; both are indexed, and
the two indexes must hold the same patients, studies, series and instances
with the same headers, and report the same files as failed or ignored.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import create_engine, select

from dicomvault.index.schema import instances, patients, series, studies
from tests.integration.test_index_folder import build_corpus, report_lines, summary
from tests.support.cli import run_cli
from tests.support.corpus import write_instance
from tests.support.datasets import make_instance
from tests.support.moto import MotoServer
from tests.support.process import ToolRun

pytestmark = pytest.mark.integration

PREFIX = "incoming/"


@pytest.fixture(scope="module")
def index_backend() -> str:
    """SQLite: the listing and chunk queries run on both back-ends in tests/unit/test_cluster.py."""
    return "sqlite"


def upload_folder(moto_server: MotoServer, bucket: str, folder: Path) -> dict[str, str]:
    """Upload every regular file under ``folder`` to PREFIX; map object URLs to relative names."""
    client = moto_server.client()
    names = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            relative = path.relative_to(folder).as_posix()
            client.put_object(Bucket=bucket, Key=PREFIX + relative, Body=path.read_bytes())
            names[f"s3://{bucket}/{PREFIX}{relative}"] = relative
    return names


def upload_instances(
    moto_server: MotoServer, bucket: str, folder: Path, count: int
) -> list[Dataset]:
    """Upload ``count`` new instances as PREFIX0.dcm, PREFIX1.dcm, ...; return their datasets."""
    client = moto_server.client()
    datasets = [make_instance() for _ in range(count)]
    for number, ds in enumerate(datasets):
        path = write_instance(folder / f"{number}.dcm", ds)
        client.put_object(Bucket=bucket, Key=f"{PREFIX}{number}.dcm", Body=path.read_bytes())
    return datasets


def index_bucket(
    moto_server: MotoServer, url: str, data_dir: Path, *options: str, allowed: str = ""
) -> ToolRun:
    bucket = url.removeprefix("s3://").partition("/")[0]
    env = {
        "DICOMVAULT_INGEST_IMPORT_BUCKETS": allowed or f"s3://{bucket}/{PREFIX}",
        "DICOMVAULT_STORAGE_S3_ENDPOINT_URL": moto_server.endpoint_url,
        "DICOMVAULT_INGEST_BATCH_SIZE": "16",
    }
    return run_cli(["index", url, "--data-dir", str(data_dir), *options], data_dir.parent, env)


def index_contents(data_dir: Path) -> dict[str, Any]:
    """The index's hierarchy and headers, without storage keys or times."""
    engine = create_engine(f"sqlite:///{data_dir / 'index.sqlite'}")
    try:
        with engine.connect() as connection:
            return {
                "patients": sorted(
                    connection.execute(select(patients.c.patient_id, patients.c.patient_name))
                ),
                "studies": sorted(connection.execute(select(studies.c.study_instance_uid))),
                "series": sorted(connection.execute(select(series.c.series_instance_uid))),
                "instances": {
                    row.sop_instance_uid: row.header
                    for row in connection.execute(
                        select(instances.c.sop_instance_uid, instances.c.header)
                    )
                },
            }
    finally:
        engine.dispose()


def test_bucket_and_folder_same_index(
    tmp_path: Path, moto_server: MotoServer, bucket_name: str
) -> None:
    root = tmp_path / "import"
    folder, valid = build_corpus(root)
    names = upload_folder(moto_server, bucket_name, folder)

    from_folder = run_cli(
        ["index", str(folder), "--data-dir", str(tmp_path / "folder-data")],
        tmp_path,
        env={"DICOMVAULT_INGEST_IMPORT_ROOTS": str(root)},
    )
    from_bucket = index_bucket(
        moto_server, f"s3://{bucket_name}/{PREFIX}", tmp_path / "bucket-data"
    )

    assert from_folder.returncode == 0, from_folder.describe()
    assert from_bucket.returncode == 0, from_bucket.describe()
    folder_index = index_contents(tmp_path / "folder-data")
    bucket_index = index_contents(tmp_path / "bucket-data")
    assert len(bucket_index["instances"]) == len({b.sop_instance_uid for b in valid})
    assert bucket_index["instances"].keys() == folder_index["instances"].keys()
    # Several bundled files share a SOP Instance UID; which of them an index
    # keeps depends on the order in which chunks commit, so only instances
    # of one file each are compared header by header.
    uids = Counter(b.sop_instance_uid for b in valid)
    for index in (bucket_index, folder_index):
        for uid, count in uids.items():
            if count > 1:
                index["instances"].pop(uid)
    assert bucket_index == folder_index

    # The same files fail or are ignored, for the same reasons; the folder also
    # reports its symbolic link, which has no counterpart in the bucket.
    folder_report = report_lines(from_folder, folder)
    folder_report.pop("escape")
    bucket_report = {names[url]: entry for url, entry in report_urls(from_bucket).items()}
    assert bucket_report == folder_report
    folder_counts = counts(summary(from_folder))
    bucket_counts = counts(summary(from_bucket))
    assert bucket_counts["found"] == len(names)
    assert bucket_counts["indexed"] == folder_counts["indexed"]
    assert bucket_counts["failed"] == folder_counts["failed"]
    assert bucket_counts["ignored"] == folder_counts["ignored"] - 1  # the symbolic link


def counts(line: str) -> dict[str, int]:
    """Map each count of a summary line ("195 files found, 158 indexed, ...") to its value."""
    return {
        match.group(2): int(match.group(1))
        for match in re.finditer(r"(\d+) (?:files )?(found|indexed|skipped|failed|ignored)", line)
    }


def report_urls(run: ToolRun) -> dict[str, tuple[str, str]]:
    """Map each object URL of the printed report to (outcome, reason)."""
    entries = {}
    for line in run.output.splitlines():
        if line.startswith("  ") and ": s3://" in line:
            outcome, _, rest = line.strip().partition(": ")
            url, _, reason = rest.partition(": ")
            entries[url] = (outcome, reason)
    return entries


def test_rerun_reads_changed_objects_only(
    tmp_path: Path, moto_server: MotoServer, bucket_name: str
) -> None:
    client = moto_server.client()
    datasets = upload_instances(moto_server, bucket_name, tmp_path, 3)
    client.put_object(Bucket=bucket_name, Key=f"{PREFIX}sub/", Body=b"")  # a folder marker
    url = f"s3://{bucket_name}/{PREFIX}"
    data_dir = tmp_path / "data"

    first = index_bucket(moto_server, url, data_dir)
    again = index_bucket(moto_server, url, data_dir)
    datasets[0].PatientName = "Changed^Name"
    changed = write_instance(tmp_path / "changed.dcm", datasets[0])
    client.put_object(Bucket=bucket_name, Key=f"{PREFIX}0.dcm", Body=changed.read_bytes())
    third = index_bucket(moto_server, url, data_dir)

    assert "3 files found, 3 indexed, 0 skipped (unchanged), 0 failed" in summary(first)
    assert "3 files found, 0 indexed, 3 skipped (unchanged), 0 failed" in summary(again)
    assert "3 files found, 1 indexed, 2 skipped (unchanged), 0 failed" in summary(third)
    names = {row[1] for row in index_contents(data_dir)["patients"]}
    assert "Changed^Name" in names


def test_import_copies_objects(tmp_path: Path, moto_server: MotoServer, bucket_name: str) -> None:
    ds = make_instance()
    path = write_instance(tmp_path / "one.dcm", ds)
    moto_server.client().put_object(
        Bucket=bucket_name, Key=f"{PREFIX}one.dcm", Body=path.read_bytes()
    )
    data_dir = tmp_path / "data"

    run = index_bucket(moto_server, f"s3://{bucket_name}/{PREFIX}", data_dir, "--import")

    assert run.returncode == 0, run.describe()
    stored = [p for p in (data_dir / "storage").rglob("*") if p.is_file()]
    assert len(stored) == 1, (stored, run.output)
    assert pydicom.dcmread(stored[0]).SOPInstanceUID == ds.SOPInstanceUID


@pytest.mark.parametrize(
    ("url", "allowed", "message"),
    [
        (
            "s3://other-bucket/incoming/",
            "",
            "Error: Cannot index s3://other-bucket/incoming/: it is not under an allowed bucket "
            "prefix",
        ),
        ("s3://", "", "Error: "),
        (
            "S3://other-bucket/incoming/",
            "",
            "Error: Cannot index S3://other-bucket/incoming/: only folders and "
            "s3://bucket/prefix URLs (in lower case) can be indexed",
        ),
    ],
)
def test_bucket_outside_allowed_prefixes_rejected(
    tmp_path: Path, moto_server: MotoServer, bucket_name: str, url: str, allowed: str, message: str
) -> None:
    run = index_bucket(
        moto_server, url, tmp_path / "data", allowed=allowed or f"s3://{bucket_name}/{PREFIX}"
    )
    assert run.returncode == 2, run.describe()
    assert message in run.output
    assert "Traceback" not in run.output


@pytest.fixture
def bucket_name(moto_server: MotoServer) -> str:
    return moto_server.new_bucket()


def test_prefix_without_slash_gets_advice(
    tmp_path: Path, moto_server: MotoServer, bucket_name: str
) -> None:
    url = f"s3://{bucket_name}/{PREFIX.rstrip('/')}"
    run = index_bucket(moto_server, url, tmp_path / "data")
    assert run.returncode == 2, run.describe()
    assert f"end the URL with '/' ({url}/) to index the allowed prefix" in run.output


def test_prune_drops_gone_objects(
    tmp_path: Path, moto_server: MotoServer, bucket_name: str
) -> None:
    client = moto_server.client()
    datasets = upload_instances(moto_server, bucket_name, tmp_path, 3)
    url = f"s3://{bucket_name}/{PREFIX}"
    data_dir = tmp_path / "data"
    first = index_bucket(moto_server, url, data_dir)
    client.delete_object(Bucket=bucket_name, Key=f"{PREFIX}1.dcm")

    without = index_bucket(moto_server, url, data_dir)
    before_prune = index_contents(data_dir)
    pruned = index_bucket(moto_server, url, data_dir, "--prune")
    after = index_bucket(moto_server, url, data_dir)

    assert "3 files found, 3 indexed" in summary(first)
    assert summary(without).endswith(", 0 pruned")
    assert len(before_prune["instances"]) == 3
    assert pruned.returncode == 0, pruned.describe()
    assert "2 files found, 0 indexed, 2 skipped (unchanged)" in summary(pruned)
    assert summary(pruned).endswith(", 1 pruned")
    assert report_urls(pruned) == {
        f"{url}1.dcm": (
            "pruned",
            f"The object is gone; instance {datasets[1].SOPInstanceUID} was removed from the index",
        )
    }
    contents = index_contents(data_dir)
    assert set(contents["instances"]) == {
        str(datasets[0].SOPInstanceUID),
        str(datasets[2].SOPInstanceUID),
    }
    assert len(contents["series"]) == 2
    assert len(contents["studies"]) == 2
    assert summary(after).endswith(", 0 pruned")
