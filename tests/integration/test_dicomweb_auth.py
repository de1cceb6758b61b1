"""DICOMweb with http.dicomweb_access = "users", through dicomweb-client with an API token."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from tests.support.network import LOOPBACK
from tests.support.server import DicomvaultServer, ServerFactory

pytestmark = pytest.mark.integration

CT_FILE = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
USERS_ONLY = {"DICOMVAULT_HTTP_DICOMWEB_ACCESS": "users"}


@pytest.fixture(scope="module")
def index_backend() -> str:
    """DICOMweb access control does not depend on the index back-end."""
    return "sqlite"


@pytest.fixture
def server(start_server: ServerFactory) -> DicomvaultServer:
    return start_server(env=USERS_ONLY)


def dicomweb(server: DicomvaultServer, headers: dict[str, str] | None = None) -> DICOMwebClient:
    client = DICOMwebClient(f"http://{LOOPBACK}:{server.http_port}/dicomweb", headers=headers)
    client.set_http_retry_params(retry=False)
    return client


def test_token_stores_searches_retrieves(server: DicomvaultServer) -> None:
    dataset = pydicom.dcmread(CT_FILE)
    with server.admin_client() as admin:
        created = admin.post("/api/tokens", json={"name": "pipeline"})
        assert created.status_code == 201, created.text
    client = dicomweb(server, {"Authorization": f"Bearer {created.json()['token']}"})

    stored = client.store_instances([dataset])
    found = client.search_for_studies(search_filters={"PatientID": dataset.PatientID})
    fetched = client.retrieve_instance(
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID
    )

    assert "FailedSOPSequence" not in stored
    assert [study["0020000D"]["Value"][0] for study in found] == [dataset.StudyInstanceUID]
    assert fetched.SOPInstanceUID == dataset.SOPInstanceUID


def test_without_token_rejected(server: DicomvaultServer) -> None:
    with pytest.raises(requests.HTTPError) as caught:
        dicomweb(server).search_for_studies()

    assert caught.value.response.status_code == 401
    assert caught.value.response.headers["WWW-Authenticate"] == "Bearer"
