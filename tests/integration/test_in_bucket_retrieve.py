"""Instances indexed in place in a bucket, retrieved from a server on filesystem storage.

The bundled corpus is uploaded to a bucket of moto's S3 server on loopback,
read by the indexing reader in place mode and written to the server's
index under in-bucket keys. The server reaches the bucket through
AWS_ENDPOINT_URL_S3, because its storage settings are those of a folder.
C-GET, WADO-RS and frames then read the objects by ranged GETs, and
deletion leaves them in the bucket.
"""

from __future__ import annotations

import pytest

from dicomvault.index.database import create_index_engine
from dicomvault.index.writer import IndexWriter, StoredInstance
from dicomvault.ingest.bucket import object_url
from dicomvault.ingest.jobs import FileJob, Mode, ReadOptions
from dicomvault.ingest.reader import Outcome, read_file
from tests.support.moto import MotoServer, source_settings
from tests.support.retrieval_checks import CORPUS, RetrieveChecks, http_client, instance_path
from tests.support.server import DicomvaultServer, ServerFactory

pytestmark = pytest.mark.integration

# (0002,0000) File Meta Information Group Length, explicit VR UL, length 4.
GROUP_LENGTH_ELEMENT = b"\x02\x00\x00\x00UL\x04\x00"


@pytest.fixture(scope="module")
def index_backend() -> str:
    """SQLite only: the keys of bucket objects change how files are read, not the index."""
    return "sqlite"


@pytest.fixture(scope="module")
def bucket(moto_server: MotoServer) -> str:
    return moto_server.new_bucket()


@pytest.fixture(scope="module")
def archive(
    start_module_server: ServerFactory,
    moto_server: MotoServer,
    bucket: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> DicomvaultServer:
    """A server on filesystem storage whose index lists the corpus in ``bucket``."""
    server = start_module_server(env={"AWS_ENDPOINT_URL_S3": moto_server.endpoint_url})
    source = source_settings(moto_server, tmp_path_factory.mktemp("reader"))
    engine = create_index_engine(server.index_url or f"sqlite:///{server.data_dir}/index.sqlite")
    writer = IndexWriter(engine)
    for number, bundled in enumerate(CORPUS):
        data = bundled.path.read_bytes()
        if number % 2 and data[132:140] == GROUP_LENGTH_ELEMENT:
            # Without the group length, the retrieve SCP parses the meta from the object.
            data = data[:132] + data[144:]
        key = f"scans/{number}/{bundled.name}"
        response = moto_server.client().put_object(Bucket=bucket, Key=key, Body=data)
        job = FileJob(object_url(bucket, key), len(data), 0, response["ETag"].strip('"'))

        result = read_file(job, ReadOptions(Mode.IN_PLACE, "", source=source))

        assert result.outcome is Outcome.INSTANCE, (bundled.name, result.reason)
        assert result.header is not None
        writer.add_instance(StoredInstance(result.header, result.storage_key, result.size, ""))
    engine.dispose()
    return server


class TestRetrieve(RetrieveChecks):
    def test_frames(self, archive: DicomvaultServer) -> None:
        with http_client(archive) as client:
            for bundled in CORPUS:
                frames = client.get(
                    instance_path(bundled) + "/frames/1",
                    headers={"Accept": 'multipart/related; type="application/octet-stream"'},
                )
                assert frames.status_code == 200, (bundled.name, frames.text)


def test_no_copies_in_storage(archive: DicomvaultServer) -> None:
    assert list((archive.data_dir / "storage").rglob("*.dcm")) == []


def test_deletion_keeps_objects(
    archive: DicomvaultServer, moto_server: MotoServer, bucket: str
) -> None:
    bundled = CORPUS[0]
    key = f"scans/0/{bundled.name}"
    before = moto_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    with archive.admin_client() as client:
        response = client.delete(f"/api/studies/{bundled.study_instance_uid}")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["deleted_files"] == 0
    assert body["kept_in_place"] == body["removed_instances"] >= 1
    after = moto_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert after == before
