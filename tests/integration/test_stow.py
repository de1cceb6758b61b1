"""STOW-RS over `dicomvault serve`: store with dicomweb-client, find with findscu, bad input."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit

import httpx
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from tests.support.corpus import (
    PYDICOM_CHARSET_FILES,
    PYDICOM_TEST_FILES,
    BundledFile,
    bundled_files,
    stored_files,
)
from tests.support.datasets import make_instance, new_uid
from tests.support.dcmtk import findscu
from tests.support.network import port_accepts_connections, wait_until
from tests.support.server import DicomvaultServer, ServerFactory

pytestmark = pytest.mark.integration

HTTP_TIMEOUT_SECONDS = 60
SUCCESS = 0x0000
BOUNDARY = "integration-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'

# Bundled files the archive does not store, whatever the protocol, and why.
NOT_STORABLE = {
    "test_files/MR_truncated.dcm": "Pixel Data is truncated",
    "test_files/rtplan_truncated.dcm": "an element value is truncated",
}


@pytest.fixture(scope="module")
def index_backend() -> str:
    """SQLite only: STOW-RS stores through the same archive code as C-STORE, which
    test_store and test_two_nodes run on PostgreSQL.
    """
    return "sqlite"


def wait_for_http(server: DicomvaultServer) -> None:
    """Wait until the HTTP port accepts connections; the DIMSE port opens first."""
    assert wait_until(lambda: port_accepts_connections(server.http_port), 30), server.describe()


def dicomweb_url(server: DicomvaultServer) -> str:
    return f"http://127.0.0.1:{server.http_port}/dicomweb"


def dicomweb_client(server: DicomvaultServer) -> DICOMwebClient:
    return DICOMwebClient(url=dicomweb_url(server))


@pytest.fixture(scope="module")
def server(start_module_server: ServerFactory) -> DicomvaultServer:
    started = start_module_server()
    wait_for_http(started)
    return started


def find_instances(server: DicomvaultServer, study: str, series: str) -> list[str]:
    """Return the SOP Instance UIDs that C-FIND (findscu) lists in one series."""
    find = findscu(
        server.port,
        {
            "QueryRetrieveLevel": "IMAGE",
            "StudyInstanceUID": study,
            "SeriesInstanceUID": series,
            "SOPInstanceUID": "",
        },
        server.ae_title,
    )
    assert find.status == SUCCESS, find.describe()
    return sorted(str(rsp.SOPInstanceUID) for rsp in find.responses)


def with_pixels(ds: Dataset, rows: int = 256) -> Dataset:
    """Give ``ds`` a 16-bit monochrome image of rows x rows pixels and a file meta."""
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.arange(rows * rows, dtype=np.uint16).tobytes()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def study_datasets(count: int, study: str | None = None) -> list[Dataset]:
    """Return ``count`` instances of one new study in two series."""
    study = study or new_uid()
    series = [new_uid(), new_uid()]
    return [
        with_pixels(
            make_instance(
                StudyInstanceUID=study,
                SeriesInstanceUID=series[number % 2],
                InstanceNumber=str(number + 1),
            )
        )
        for number in range(count)
    ]


def referenced_uids(rsp: Dataset) -> list[str]:
    return [str(item.ReferencedSOPInstanceUID) for item in rsp.get("ReferencedSOPSequence", [])]


def failure_reasons(rsp: Dataset) -> dict[str, int]:
    return {
        str(item.ReferencedSOPInstanceUID): int(item.FailureReason)
        for item in rsp.get("FailedSOPSequence", [])
    }


def response_of(error: requests.HTTPError) -> Dataset:
    response = error.response
    assert response is not None
    assert response.headers["Content-Type"] == "application/dicom+json"
    return Dataset.from_json(response.json())


class TestStoreWithDicomwebClient:
    def test_study_found_by_cfind(self, server: DicomvaultServer) -> None:
        datasets = study_datasets(6)
        rsp = dicomweb_client(server).store_instances(datasets)

        assert sorted(referenced_uids(rsp)) == sorted(ds.SOPInstanceUID for ds in datasets)
        assert "FailedSOPSequence" not in rsp
        for series in {ds.SeriesInstanceUID for ds in datasets}:
            expected = sorted(
                ds.SOPInstanceUID for ds in datasets if ds.SeriesInstanceUID == series
            )
            assert find_instances(server, datasets[0].StudyInstanceUID, series) == expected

    def test_retrieve_urls(self, server: DicomvaultServer) -> None:
        datasets = study_datasets(2)
        study = datasets[0].StudyInstanceUID
        rsp = dicomweb_client(server).store_instances(datasets, study_instance_uid=study)

        # dicomweb-client 0.61 sends a Host header without the port, and the
        # URLs take their host from it, so only the paths are compared.
        assert urlsplit(rsp.RetrieveURL).path == f"/dicomweb/studies/{study}"
        for item, ds in zip(rsp.ReferencedSOPSequence, datasets, strict=True):
            assert urlsplit(item.RetrieveURL).path == (
                f"/dicomweb/studies/{study}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}"
            )

    def test_large_request_chunked(self, server: DicomvaultServer) -> None:
        # 12 instances of 512 KiB: dicomweb-client sends bodies over 1 MB with
        # chunked transfer encoding, and the archive spools them to disk.
        datasets = [with_pixels(ds, rows=512) for ds in study_datasets(12)]
        rsp = dicomweb_client(server).store_instances(datasets)

        assert len(referenced_uids(rsp)) == 12
        series = datasets[0].SeriesInstanceUID
        assert len(find_instances(server, datasets[0].StudyInstanceUID, series)) == 6

    def test_other_study_rejected(self, server: DicomvaultServer) -> None:
        datasets = study_datasets(2)
        other_study = new_uid()
        with pytest.raises(requests.HTTPError) as excinfo:
            dicomweb_client(server).store_instances(datasets, study_instance_uid=other_study)

        assert excinfo.value.response is not None
        assert excinfo.value.response.status_code == 409
        rsp = response_of(excinfo.value)
        assert failure_reasons(rsp) == {ds.SOPInstanceUID: 0xC409 for ds in datasets}
        for ds in datasets:
            assert find_instances(server, ds.StudyInstanceUID, ds.SeriesInstanceUID) == []

    def test_partly_other_study_accepted(self, server: DicomvaultServer) -> None:
        inside = study_datasets(2)
        outside = study_datasets(1)
        study = inside[0].StudyInstanceUID
        rsp = dicomweb_client(server).store_instances(inside + outside, study_instance_uid=study)

        assert sorted(referenced_uids(rsp)) == sorted(ds.SOPInstanceUID for ds in inside)
        assert failure_reasons(rsp) == {outside[0].SOPInstanceUID: 0xC409}
        assert find_instances(server, study, outside[0].SeriesInstanceUID) == []
        assert (
            find_instances(server, outside[0].StudyInstanceUID, outside[0].SeriesInstanceUID) == []
        )

    def test_duplicate_replaced(self, server: DicomvaultServer) -> None:
        (ds,) = study_datasets(1)
        client = dicomweb_client(server)
        client.store_instances([ds])
        ds.PatientName = "Stored^Twice"
        rsp = client.store_instances([ds])

        assert referenced_uids(rsp) == [ds.SOPInstanceUID]
        assert find_instances(server, ds.StudyInstanceUID, ds.SeriesInstanceUID) == [
            ds.SOPInstanceUID
        ]


@dataclasses.dataclass(frozen=True)
class BundleOutcome:
    """The server and the response to one STOW-RS request with every bundled file."""

    server: DicomvaultServer
    files: list[BundledFile]
    status_code: int
    response: Dataset


def _bundled_to_send() -> list[BundledFile]:
    """Bundled files, one per SOP Instance UID, without the ones no protocol stores."""
    seen: set[str] = set()
    files = []
    for bundled in bundled_files(PYDICOM_TEST_FILES) + bundled_files(PYDICOM_CHARSET_FILES):
        if bundled.name in NOT_STORABLE or bundled.sop_instance_uid in seen:
            continue
        seen.add(bundled.sop_instance_uid)
        files.append(bundled)
    return files


def multipart_body(parts: Sequence[bytes]) -> bytes:
    body = b""
    for part in parts:
        body += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += part + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


@pytest.fixture(scope="module")
def bundle_outcome(start_module_server: ServerFactory) -> BundleOutcome:
    """Send every bundled file unchanged, as one multipart body, to a new server."""
    server = start_module_server()
    wait_for_http(server)
    files = _bundled_to_send()
    body = multipart_body([bundled.path.read_bytes() for bundled in files])
    response = httpx.post(
        f"{dicomweb_url(server)}/studies",
        content=body,
        headers={"Content-Type": MULTIPART},
        timeout=HTTP_TIMEOUT_SECONDS,
    )
    return BundleOutcome(server, files, response.status_code, Dataset.from_json(response.json()))


class TestStoreBundledFiles:
    def test_every_file_stored(self, bundle_outcome: BundleOutcome) -> None:
        assert bundle_outcome.status_code == 200, failure_reasons(bundle_outcome.response)
        assert sorted(referenced_uids(bundle_outcome.response)) == sorted(
            bundled.sop_instance_uid for bundled in bundle_outcome.files
        )

    def test_every_file_found_by_cfind(self, bundle_outcome: BundleOutcome) -> None:
        by_series: dict[tuple[str, str], list[str]] = {}
        for bundled in bundle_outcome.files:
            key = (bundled.study_instance_uid, bundled.series_instance_uid)
            by_series.setdefault(key, []).append(bundled.sop_instance_uid)

        for (study, series), expected in sorted(by_series.items()):
            found = find_instances(bundle_outcome.server, study, series)
            assert found == sorted(expected), f"series {series} of study {study}"


# Requests that store nothing, with the status code and a phrase of the detail.
def _bad_requests() -> list[object]:
    good = with_pixels(make_instance())
    good_file = _encode(good)
    body = multipart_body([good_file])
    no_uid = make_instance(SOPInstanceUID=None)
    no_uid_file = b"\x00" * 128 + b"DICM" + _meta_only_transfer_syntax(no_uid)
    return [
        pytest.param("text/plain", body, 415, "is not supported", id="wrong content type"),
        pytest.param(
            'multipart/related; type="application/dicom"',
            body,
            400,
            "has no boundary parameter",
            id="missing boundary",
        ),
        pytest.param(
            MULTIPART, body[: len(body) // 2], 400, "no close delimiter", id="truncated body"
        ),
        pytest.param(
            MULTIPART,
            body.replace(b"\r\n\r\n", b"\r\n", 1),
            400,
            "The multipart body is malformed",
            id="malformed",
        ),
        pytest.param(
            MULTIPART,
            body.replace(b"Content-Type: application/dicom", b"Content-Type: image/jpeg"),
            415,
            "Part 1 has Content-Type 'image/jpeg'",
            id="bad part type",
        ),
        pytest.param(
            MULTIPART,
            multipart_body([good_file, b"not a DICOM file" * 20]),
            400,
            "Part 2 is not a DICOM file",
            id="not DICOM",
        ),
        pytest.param(
            MULTIPART,
            multipart_body([good_file, no_uid_file]),
            400,
            "Part 2 has no SOP Class UID (0008,0016) or no SOP Instance UID (0008,0018)",
            id="missing UIDs",
        ),
    ]


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _meta_only_transfer_syntax(ds: Dataset) -> bytes:
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def empty_server(start_module_server: ServerFactory) -> Iterator[DicomvaultServer]:
    """A server that must stay empty: only bad requests go to it."""
    started = start_module_server(
        config="[http]\nstow_max_instance_size = 200000\nstow_max_request_size = 2000000\n"
    )
    wait_for_http(started)
    yield started
    assert stored_files(started.data_dir) == []


class TestBadRequests:
    @pytest.mark.parametrize(("content_type", "body", "status_code", "detail"), _bad_requests())
    def test_rejected(
        self,
        empty_server: DicomvaultServer,
        content_type: str,
        body: bytes,
        status_code: int,
        detail: str,
    ) -> None:
        response = httpx.post(
            f"{dicomweb_url(empty_server)}/studies",
            content=body,
            headers={"Content-Type": content_type},
            timeout=HTTP_TIMEOUT_SECONDS,
        )

        assert response.status_code == status_code, response.text
        assert detail in response.json()["detail"]
        assert stored_files(empty_server.data_dir) == []

    def test_instance_too_large(self, empty_server: DicomvaultServer) -> None:
        large = with_pixels(make_instance(), rows=512)
        with pytest.raises(requests.HTTPError) as excinfo:
            dicomweb_client(empty_server).store_instances([large])

        assert excinfo.value.response is not None
        assert excinfo.value.response.status_code == 413
        assert "http.stow_max_instance_size" in excinfo.value.response.json()["detail"]
        assert stored_files(empty_server.data_dir) == []

    def test_request_too_large(self, empty_server: DicomvaultServer) -> None:
        datasets = [with_pixels(make_instance(), rows=128) for _ in range(80)]
        with pytest.raises(requests.HTTPError) as excinfo:
            dicomweb_client(empty_server).store_instances(datasets)

        assert excinfo.value.response is not None
        assert excinfo.value.response.status_code == 413
        assert "http.stow_max_request_size" in excinfo.value.response.json()["detail"]
        assert stored_files(empty_server.data_dir) == []

    def test_invalid_study_uid(self, empty_server: DicomvaultServer) -> None:
        with pytest.raises(requests.HTTPError) as excinfo:
            dicomweb_client(empty_server).store_instances(
                [with_pixels(make_instance())], study_instance_uid="1.2.abc"
            )

        assert excinfo.value.response is not None
        assert excinfo.value.response.status_code == 400
        assert stored_files(empty_server.data_dir) == []


class TestDuplicatePolicyReject:
    def test_duplicate_rejected(self, start_server: ServerFactory) -> None:
        server = start_server(config='[storage]\nduplicate_policy = "reject"\n')
        wait_for_http(server)
        (ds,) = study_datasets(1)
        client = dicomweb_client(server)
        client.store_instances([ds])
        with pytest.raises(requests.HTTPError) as excinfo:
            client.store_instances([ds])

        assert excinfo.value.response is not None
        assert excinfo.value.response.status_code == 409
        assert failure_reasons(response_of(excinfo.value)) == {ds.SOPInstanceUID: 0x0111}
        assert len(stored_files(server.data_dir)) == 1
        assert find_instances(server, ds.StudyInstanceUID, ds.SeriesInstanceUID) == [
            ds.SOPInstanceUID
        ]
