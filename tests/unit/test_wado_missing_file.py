"""WADO-RS and WADO-URI when a file the index lists was deleted outside the archive.

A retrieve must respond with a status code and a message, or with a
well-formed body that leaves the missing instance out, never with a cut body.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from dicomvault.archive import Archive, StoreResult
from dicomvault.storage.filesystem import FilesystemStorage
from dicomvault.web.app import create_app
from dicomvault.web.server import HttpServer
from tests.support.datasets import encode_dataset, make_instance, new_uid
from tests.support.network import LOOPBACK, free_port
from tests.support.retrieval_checks import DICOM_ANY_SYNTAX, parse_multipart

TIMEOUT_SECONDS = 30


@pytest.fixture(scope="module")
def index_backend() -> str:
    """Run on SQLite only: the retrieve path reads storage the same way on both back-ends."""
    return "sqlite"


@pytest.fixture
def client(archive: Archive) -> Iterator[httpx.Client]:
    app = create_app(None, archive, None)  # type: ignore[arg-type]
    server = HttpServer(app, LOOPBACK, free_port())
    server.start()
    try:
        with httpx.Client(
            base_url=f"http://{LOOPBACK}:{server.port}", timeout=TIMEOUT_SECONDS
        ) as http:
            yield http
    finally:
        server.stop()


def store_study(archive: Archive, count: int) -> list[StoreResult]:
    study, series = new_uid(), new_uid()
    return [
        archive.store(
            encode_dataset(make_instance(StudyInstanceUID=study, SeriesInstanceUID=series)),
            ExplicitVRLittleEndian,
        )
        for _ in range(count)
    ]


def delete_file(archive: Archive, stored: StoreResult) -> None:
    storage = archive.storage
    assert isinstance(storage, FilesystemStorage)
    storage.path_for(stored.storage_key).unlink()


def test_study_retrieve_leaves_out_missing_instance(
    archive: Archive, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    stored = store_study(archive, 3)
    delete_file(archive, stored[1])

    with caplog.at_level(logging.ERROR):
        response = client.get(
            f"/dicomweb/studies/{stored[0].study_instance_uid}",
            headers={"Accept": DICOM_ANY_SYNTAX},
        )

    assert response.status_code == 200
    assert len(parse_multipart(response)) == 2
    assert response.content.endswith(b"--\r\n")
    assert f"WADO-RS left out {stored[1].sop_instance_uid}" in caplog.text


def test_converted_study_retrieve_leaves_out_missing_instance(
    archive: Archive, client: httpx.Client
) -> None:
    stored = store_study(archive, 2)
    delete_file(archive, stored[0])

    response = client.get(
        f"/dicomweb/studies/{stored[0].study_instance_uid}",
        headers={
            "Accept": 'multipart/related; type="application/dicom"; '
            "transfer-syntax=1.2.840.10008.1.2.1"
        },
    )

    assert response.status_code == 200
    assert len(parse_multipart(response)) == 1


def test_instance_missing_file_error(archive: Archive, client: httpx.Client) -> None:
    (stored,) = store_study(archive, 1)
    delete_file(archive, stored)

    response = client.get(
        f"/dicomweb/studies/{stored.study_instance_uid}/series/{stored.series_instance_uid}"
        f"/instances/{stored.sop_instance_uid}",
        headers={"Accept": DICOM_ANY_SYNTAX},
    )

    assert response.status_code == 500
    assert "missing from storage" in response.json()["detail"]


def test_wado_uri_missing_file_error(archive: Archive, client: httpx.Client) -> None:
    (stored,) = store_study(archive, 1)
    delete_file(archive, stored)

    response = client.get(
        "/wado",
        params={
            "requestType": "WADO",
            "studyUID": stored.study_instance_uid,
            "seriesUID": stored.series_instance_uid,
            "objectUID": stored.sop_instance_uid,
            "contentType": "application/dicom",
        },
    )

    assert response.status_code == 500
    assert "missing from storage" in response.json()["detail"]
