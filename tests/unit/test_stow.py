"""STOW-RS on a test app: store responses, failure reasons, and bad requests that store nothing.

The router is mounted under /dicomweb on a small FastAPI app, served by
uvicorn on a loopback port, over an archive with an emptied index. Every
test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from fastapi import FastAPI
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomvault.archive import Archive
from dicomvault.dicom.part10 import split_part10
from dicomvault.storage.base import StorageFullError
from dicomvault.storage.filesystem import FilesystemStorage
from dicomvault.web.dicomweb.stow import router
from dicomvault.web.server import HttpServer
from tests.support.datasets import make_instance, new_uid
from tests.support.network import LOOPBACK, free_port

TIMEOUT_SECONDS = 60
BOUNDARY = "stow-test-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def part10_bytes(ds: Dataset, transfer_syntax_uid: str = ExplicitVRLittleEndian) -> bytes:
    """Encode ``ds`` as a DICOM file with File Meta Information built from its UIDs."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", CTImageStorage)
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", new_uid())
    meta.TransferSyntaxUID = transfer_syntax_uid
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def raw_part10(ds: Dataset) -> bytes:
    """Encode ``ds`` as a DICOM file with its File Meta Information written unchanged."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return b"\x00" * 128 + b"DICM" + buffer.getvalue()


def multipart_body(
    parts: Sequence[bytes], part_type: str | None = "application/dicom", boundary: str = BOUNDARY
) -> bytes:
    """Join ``parts`` into a multipart body, each with ``part_type`` unless None."""
    body = b""
    for part in parts:
        body += f"--{boundary}\r\n".encode()
        if part_type is not None:
            body += f"Content-Type: {part_type}\r\n".encode()
        body += b"\r\n" + part + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def stored_paths(archive: Archive) -> list[Path]:
    """List every file under the storage root, temporary ones included."""
    storage = archive.storage
    assert isinstance(storage, FilesystemStorage)
    return sorted(p for p in storage.root.rglob("*") if p.is_file())


def stored_files(archive: Archive) -> list[str]:
    return [path.name for path in stored_paths(archive)]


def dataset_bytes(data: bytes) -> bytes:
    """Return the dataset of a DICOM file: its bytes after the File Meta Information."""
    return data[split_part10(data).dataset_offset :]


def is_stored(archive: Archive, sop_instance_uid: str) -> bool:
    return archive.writer.instance_exists(sop_instance_uid)


@pytest.fixture(scope="module")
def app() -> Iterator[FastAPI]:
    """The test app, served for the whole module; each test sets its archive."""
    application = FastAPI()
    application.include_router(router, prefix="/dicomweb")
    server = HttpServer(application, LOOPBACK, free_port())
    server.start()
    application.state.base_url = f"http://{LOOPBACK}:{server.port}"
    yield application
    server.stop()


@pytest.fixture
def use_archive(app: FastAPI) -> Callable[[Archive], httpx.Client]:
    """Return a function that serves an archive and returns a client of it."""

    def serve(archive: Archive) -> httpx.Client:
        app.state.archive = archive
        return httpx.Client(base_url=app.state.base_url, timeout=TIMEOUT_SECONDS)

    return serve


@pytest.fixture
def client(
    archive: Archive, use_archive: Callable[[Archive], httpx.Client]
) -> Iterator[httpx.Client]:
    with use_archive(archive) as http_client:
        yield http_client


def post(
    client: httpx.Client,
    body: bytes,
    content_type: str | None = MULTIPART,
    path: str = "/studies",
) -> httpx.Response:
    headers = {} if content_type is None else {"Content-Type": content_type}
    return client.post(f"/dicomweb{path}", content=body, headers=headers)


def response_dataset(response: httpx.Response) -> Dataset:
    assert response.headers["content-type"] == "application/dicom+json"
    return Dataset.from_json(response.json())


def base_url(client: httpx.Client) -> str:
    return f"{str(client.base_url).rstrip('/')}/dicomweb"


def instance_url(client: httpx.Client, ds: Dataset) -> str:
    return (
        f"{base_url(client)}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


class TestStoreInstances:
    def test_one_instance_stored(self, client: httpx.Client, archive: Archive) -> None:
        ds = make_instance()
        response = post(client, multipart_body([part10_bytes(ds)]))

        assert response.status_code == 200, response.text
        assert is_stored(archive, ds.SOPInstanceUID)

    def test_response_references_instance(self, client: httpx.Client) -> None:
        ds = make_instance()
        rsp = response_dataset(post(client, multipart_body([part10_bytes(ds)])))

        assert rsp.RetrieveURL == f"{base_url(client)}/studies/{ds.StudyInstanceUID}"
        assert "FailedSOPSequence" not in rsp
        assert len(rsp.ReferencedSOPSequence) == 1
        item = rsp.ReferencedSOPSequence[0]
        assert item.ReferencedSOPClassUID == ds.SOPClassUID
        assert item.ReferencedSOPInstanceUID == ds.SOPInstanceUID
        assert item.RetrieveURL == instance_url(client, ds)
        assert "WarningReason" not in item

    def test_dataset_stored_byte_for_byte(self, client: httpx.Client, archive: Archive) -> None:
        ds = make_instance()
        data = part10_bytes(ds, ImplicitVRLittleEndian)
        post(client, multipart_body([data]))

        (path,) = stored_paths(archive)
        stored = path.read_bytes()
        assert dataset_bytes(stored) == dataset_bytes(data)
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian

    def test_several_instances(self, client: httpx.Client, archive: Archive) -> None:
        study = new_uid()
        datasets = [make_instance(StudyInstanceUID=study) for _ in range(5)]
        response = post(client, multipart_body([part10_bytes(ds) for ds in datasets]))

        assert response.status_code == 200
        rsp = response_dataset(response)
        assert [item.ReferencedSOPInstanceUID for item in rsp.ReferencedSOPSequence] == [
            ds.SOPInstanceUID for ds in datasets
        ]
        for ds in datasets:
            assert is_stored(archive, ds.SOPInstanceUID)

    def test_several_studies_leave_retrieve_url_empty(self, client: httpx.Client) -> None:
        datasets = [make_instance(), make_instance()]
        rsp = response_dataset(post(client, multipart_body([part10_bytes(ds) for ds in datasets])))

        assert rsp.RetrieveURL in ("", None)
        assert len(rsp.ReferencedSOPSequence) == 2

    def test_part_without_content_type(self, client: httpx.Client, archive: Archive) -> None:
        ds = make_instance()
        response = post(client, multipart_body([part10_bytes(ds)], part_type=None))

        assert response.status_code == 200, response.text
        assert is_stored(archive, ds.SOPInstanceUID)

    def test_part_with_transfer_syntax_parameter(self, client: httpx.Client) -> None:
        ds = make_instance()
        part_type = f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
        response = post(client, multipart_body([part10_bytes(ds)], part_type=part_type))

        assert response.status_code == 200, response.text

    def test_quoted_boundary_and_epilogue(self, client: httpx.Client, archive: Archive) -> None:
        ds = make_instance()
        body = multipart_body([part10_bytes(ds)]) + b"epilogue text\r\n"
        content_type = f'multipart/related; boundary="{BOUNDARY}"; type=application/dicom'
        response = post(client, body, content_type)

        assert response.status_code == 200, response.text
        assert is_stored(archive, ds.SOPInstanceUID)

    def test_preamble_ignored(self, client: httpx.Client, archive: Archive) -> None:
        ds = make_instance()
        body = b"This is a preamble.\r\n" + multipart_body([part10_bytes(ds)])
        response = post(client, body)

        assert response.status_code == 200, response.text
        assert is_stored(archive, ds.SOPInstanceUID)

    def test_single_application_dicom_body(self, client: httpx.Client, archive: Archive) -> None:
        ds = make_instance()
        response = post(client, part10_bytes(ds), "application/dicom")

        assert response.status_code == 200, response.text
        assert is_stored(archive, ds.SOPInstanceUID)

    def test_file_meta_without_uids(self, client: httpx.Client, archive: Archive) -> None:
        ds = make_instance()
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        response = post(client, multipart_body([raw_part10(ds)]))

        assert response.status_code == 200, response.text
        assert is_stored(archive, ds.SOPInstanceUID)

    def test_file_meta_without_preamble(self, client: httpx.Client, archive: Archive) -> None:
        # pydicom writes a dataset created in memory this way, and so
        # dicomweb-client sends it.
        ds = make_instance()
        part10_bytes(ds)
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds)
        assert buffer.getvalue()[:2] == b"\x02\x00"
        response = post(client, multipart_body([buffer.getvalue()]))

        assert response.status_code == 200, response.text
        assert is_stored(archive, ds.SOPInstanceUID)

    def test_large_instance_spooled(self, client: httpx.Client, archive: Archive) -> None:
        # Larger than the spool's memory part, and than one write batch.
        ds = make_instance(Rows=2048, Columns=2048, BitsAllocated=16, BitsStored=16)
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = bytes(range(256)) * (2048 * 2048 * 2 // 256)
        response = post(client, multipart_body([part10_bytes(ds), part10_bytes(make_instance())]))

        assert response.status_code == 200, response.text
        assert is_stored(archive, ds.SOPInstanceUID)


class TestStoreStudy:
    def test_same_study_stored(self, client: httpx.Client, archive: Archive) -> None:
        ds = make_instance()
        response = post(
            client, multipart_body([part10_bytes(ds)]), path=f"/studies/{ds.StudyInstanceUID}"
        )

        assert response.status_code == 200, response.text
        assert (
            response_dataset(response).RetrieveURL
            == f"{base_url(client)}/studies/{ds.StudyInstanceUID}"
        )
        assert is_stored(archive, ds.SOPInstanceUID)

    def test_other_study_fails(self, client: httpx.Client, archive: Archive) -> None:
        ds = make_instance()
        study = new_uid()
        response = post(client, multipart_body([part10_bytes(ds)]), path=f"/studies/{study}")

        assert response.status_code == 409
        rsp = response_dataset(response)
        assert "ReferencedSOPSequence" not in rsp
        assert rsp.RetrieveURL in ("", None)
        item = rsp.FailedSOPSequence[0]
        assert item.ReferencedSOPInstanceUID == ds.SOPInstanceUID
        assert item.ReferencedSOPClassUID == ds.SOPClassUID
        assert item.FailureReason == 0xC409
        assert not is_stored(archive, ds.SOPInstanceUID)
        assert stored_files(archive) == []

    def test_other_study_message(self, client: httpx.Client) -> None:
        ds = make_instance()
        study = new_uid()
        response = post(client, multipart_body([part10_bytes(ds)]), path=f"/studies/{study}")

        assert response.headers["warning"] == (
            f"299 dicomvault \"{ds.SOPInstanceUID} (part 1) was not stored: The dataset's "
            f"Study Instance UID {ds.StudyInstanceUID} differs from the study {study} the "
            'request stores into"'
        )

    def test_mixed_studies_accepted(self, client: httpx.Client, archive: Archive) -> None:
        inside = make_instance()
        outside = make_instance()
        response = post(
            client,
            multipart_body([part10_bytes(inside), part10_bytes(outside)]),
            path=f"/studies/{inside.StudyInstanceUID}",
        )

        assert response.status_code == 202
        rsp = response_dataset(response)
        assert [i.ReferencedSOPInstanceUID for i in rsp.ReferencedSOPSequence] == [
            inside.SOPInstanceUID
        ]
        assert [i.ReferencedSOPInstanceUID for i in rsp.FailedSOPSequence] == [
            outside.SOPInstanceUID
        ]
        assert is_stored(archive, inside.SOPInstanceUID)
        assert not is_stored(archive, outside.SOPInstanceUID)

    def test_invalid_study_uid(self, client: httpx.Client, archive: Archive) -> None:
        response = post(client, multipart_body([part10_bytes(make_instance())]), path="/studies/x")

        assert response.status_code == 400
        assert "'x' is not a valid Study Instance UID" in response.json()["detail"]
        assert stored_files(archive) == []


class TestDuplicates:
    def test_replaced_by_default(self, client: httpx.Client, archive: Archive) -> None:
        ds = make_instance()
        first = post(client, multipart_body([part10_bytes(ds)]))
        ds.PatientName = "Changed^Name"
        second = post(client, multipart_body([part10_bytes(ds)]))

        assert first.status_code == 200
        assert second.status_code == 200
        assert len(stored_files(archive)) == 1

    def test_rejected_by_policy(
        self, make_archive: Callable[..., Archive], use_archive: Callable[[Archive], httpx.Client]
    ) -> None:
        archive = make_archive(storage__duplicate_policy="reject")
        ds = make_instance()
        with use_archive(archive) as client:
            post(client, multipart_body([part10_bytes(ds)]))
            response = post(client, multipart_body([part10_bytes(ds)]))

        assert response.status_code == 409
        assert response_dataset(response).FailedSOPSequence[0].FailureReason == 0x0111
        assert len(stored_files(archive)) == 1

    def test_twice_in_one_request_rejected(
        self, make_archive: Callable[..., Archive], use_archive: Callable[[Archive], httpx.Client]
    ) -> None:
        archive = make_archive(storage__duplicate_policy="reject")
        ds = make_instance()
        with use_archive(archive) as client:
            response = post(client, multipart_body([part10_bytes(ds), part10_bytes(ds)]))

        assert response.status_code == 202
        rsp = response_dataset(response)
        assert len(rsp.ReferencedSOPSequence) == 1
        assert rsp.FailedSOPSequence[0].FailureReason == 0x0111


class TestInstanceFailures:
    def test_missing_study_uid(self, client: httpx.Client, archive: Archive) -> None:
        ds = make_instance(StudyInstanceUID=None)
        response = post(client, multipart_body([part10_bytes(ds)]))

        assert response.status_code == 409
        assert response_dataset(response).FailedSOPSequence[0].FailureReason == 0xA900
        assert "has no Study Instance UID (0020,000D)" in response.headers["warning"]
        assert stored_files(archive) == []

    def test_truncated_dataset(self, client: httpx.Client, archive: Archive) -> None:
        ds = make_instance(BitsAllocated=8, PixelData=b"\x00" * 2048)
        data = part10_bytes(ds)[:-1000]
        response = post(client, multipart_body([data]))

        assert response.status_code == 409
        assert response_dataset(response).FailedSOPSequence[0].FailureReason == 0xC000
        assert "truncated" in response.headers["warning"]
        assert stored_files(archive) == []

    def test_unknown_transfer_syntax(self, client: httpx.Client, archive: Archive) -> None:
        ds = make_instance()
        data = part10_bytes(ds).replace(
            ExplicitVRLittleEndian.encode() + b"\x00", b"1.2.3.4.5.6.7.8.9.10"
        )
        response = post(client, multipart_body([data]))

        assert response.status_code == 409
        assert response_dataset(response).FailedSOPSequence[0].FailureReason == 0xC122
        assert stored_files(archive) == []

    def test_storage_full_is_507(
        self, client: httpx.Client, archive: Archive, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def put(key: str, chunks: object) -> int:
            raise StorageFullError(f"No space left to store {key}")

        monkeypatch.setattr(archive.storage, "put", put)
        response = post(client, multipart_body([part10_bytes(make_instance())]))

        assert response.status_code == 507
        assert response_dataset(response).FailedSOPSequence[0].FailureReason == 0xA700
        assert stored_files(archive) == []

    def test_storage_full_and_other_failure_is_409(
        self, client: httpx.Client, archive: Archive, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def put(key: str, chunks: object) -> int:
            raise StorageFullError(f"No space left to store {key}")

        monkeypatch.setattr(archive.storage, "put", put)
        parts = [part10_bytes(make_instance()), part10_bytes(make_instance(StudyInstanceUID=None))]
        response = post(client, multipart_body(parts))

        assert response.status_code == 409
        reasons = [item.FailureReason for item in response_dataset(response).FailedSOPSequence]
        assert reasons == [0xA700, 0xA900]

    def test_file_meta_instance_uid_ignored(self, client: httpx.Client, archive: Archive) -> None:
        # The stored file gets a new File Meta Information from the dataset's UIDs.
        ds = make_instance()
        part10_bytes(ds)
        ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
        response = post(client, multipart_body([raw_part10(ds)]))

        assert response.status_code == 200, response.text
        item = response_dataset(response).ReferencedSOPSequence[0]
        assert item.ReferencedSOPInstanceUID == ds.SOPInstanceUID
        assert is_stored(archive, ds.SOPInstanceUID)

    def test_sop_class_mismatch_warned(self, client: httpx.Client, archive: Archive) -> None:
        ds = make_instance()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        response = post(client, multipart_body([raw_part10(ds)]))

        assert response.status_code == 202
        item = response_dataset(response).ReferencedSOPSequence[0]
        assert item.WarningReason == 0xB007
        assert "differs from the dataset's SOP Class UID" in response.headers["warning"]
        assert is_stored(archive, ds.SOPInstanceUID)

    def test_warning_headers_capped(
        self, make_archive: Callable[..., Archive], use_archive: Callable[[Archive], httpx.Client]
    ) -> None:
        archive = make_archive()
        datasets = [make_instance(StudyInstanceUID=None) for _ in range(25)]
        with use_archive(archive) as client:
            response = post(client, multipart_body([part10_bytes(ds) for ds in datasets]))

        warnings = response.headers.get_list("warning")
        assert len(warnings) == 20
        assert warnings[-1] == '299 dicomvault "6 more instances failed or warned"'


NOT_DICOM = b"This is not a DICOM file, just some text." * 10


def _no_uid_file() -> bytes:
    ds = make_instance(SOPInstanceUID=None)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta = meta
    return raw_part10(ds)


def _bad_requests() -> list[Any]:
    """(id, Content-Type, body, status, text in the detail) of requests that store nothing."""
    good = part10_bytes(make_instance())
    body = multipart_body([good])
    return [
        ("no content type", None, body, 415, "Content-Type '' is not supported"),
        ("text/plain", "text/plain", body, 415, "Content-Type 'text/plain' is not supported"),
        (
            "multipart/form-data",
            f"multipart/form-data; boundary={BOUNDARY}",
            body,
            415,
            "is not supported",
        ),
        (
            "metadata type",
            f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
            body,
            415,
            "(metadata and bulk data) is not supported",
        ),
        (
            "octet-stream type",
            f'multipart/related; type="application/octet-stream"; boundary={BOUNDARY}',
            body,
            415,
            'type="application/octet-stream" is not supported',
        ),
        (
            "missing boundary",
            'multipart/related; type="application/dicom"',
            body,
            400,
            "has no boundary parameter",
        ),
        (
            "boundary too long",
            f'multipart/related; type="application/dicom"; boundary={"b" * 71}',
            body,
            400,
            "boundary must have 1 to 70 characters, got 71",
        ),
        (
            "other boundary",
            'multipart/related; type="application/dicom"; boundary=other',
            body,
            400,
            "has no delimiter '--other': it is empty, or its boundary differs",
        ),
        ("truncated body", MULTIPART, body[: len(body) // 2], 400, "no close delimiter"),
        ("no close delimiter", MULTIPART, body[: -len(f"--{BOUNDARY}--\r\n")], 400, "truncated"),
        ("no delimiter", MULTIPART, b"x" * 70_000, 400, "has no delimiter '--stow-test"),
        ("delimiter without CRLF", MULTIPART, b"preamble" + body, 400, "no instance to store"),
        ("no part", MULTIPART, f"--{BOUNDARY}--\r\n".encode(), 400, "no instance to store"),
        ("empty body", MULTIPART, b"", 400, "has no delimiter"),
        ("empty single body", "application/dicom", b"", 400, "no instance to store"),
        (
            "text part",
            MULTIPART,
            multipart_body([good], part_type="text/plain"),
            415,
            "Part 1 has Content-Type 'text/plain'; every part must be application/dicom",
        ),
        (
            "json part after a good one",
            MULTIPART,
            multipart_body([good]).replace(
                f"--{BOUNDARY}--".encode(),
                f"--{BOUNDARY}\r\nContent-Type: application/dicom+json\r\n\r\n{{}}\r\n"
                f"--{BOUNDARY}--".encode(),
            ),
            415,
            "Part 2 has Content-Type 'application/dicom+json'",
        ),
        (
            "not DICOM",
            MULTIPART,
            multipart_body([NOT_DICOM]),
            400,
            "Part 1 is not a DICOM file: Not a DICOM file: no 'DICM' prefix",
        ),
        (
            "not DICOM after a good one",
            MULTIPART,
            multipart_body([good, NOT_DICOM]),
            400,
            "Part 2 is not a DICOM file",
        ),
        (
            "not DICOM single body",
            "application/dicom",
            NOT_DICOM,
            400,
            "Part 1 is not a DICOM file",
        ),
        (
            "no SOP Instance UID",
            MULTIPART,
            multipart_body([_no_uid_file()]),
            400,
            "Part 1 has no SOP Class UID (0008,0016) or no SOP Instance UID (0008,0018)",
        ),
        (
            "bad part header",
            MULTIPART,
            body.replace(b"Content-Type:", b"Content Type:"),
            400,
            "malformed",
        ),
    ]


class TestBadRequests:
    @pytest.mark.parametrize(
        ("content_type", "body", "status_code", "detail"),
        [pytest.param(*case[1:], id=case[0]) for case in _bad_requests()],
    )
    def test_rejected_storing_nothing(
        self,
        client: httpx.Client,
        archive: Archive,
        content_type: str | None,
        body: bytes,
        status_code: int,
        detail: str,
    ) -> None:
        response = post(client, body, content_type)

        assert response.status_code == status_code, response.text
        assert detail in response.json()["detail"]
        assert stored_files(archive) == []

    def test_instance_too_large(
        self, make_archive: Callable[..., Archive], use_archive: Callable[[Archive], httpx.Client]
    ) -> None:
        archive = make_archive(http__stow_max_instance_size=1000)
        ds = make_instance(BitsAllocated=8, PixelData=b"\x00" * 2000)
        with use_archive(archive) as client:
            response = post(
                client, multipart_body([part10_bytes(make_instance()), part10_bytes(ds)])
            )

        assert response.status_code == 413
        assert response.json()["detail"] == (
            "Part 2 is larger than 1000 bytes, the limit set by http.stow_max_instance_size"
        )
        assert stored_files(archive) == []

    def test_request_too_large(
        self, make_archive: Callable[..., Archive], use_archive: Callable[[Archive], httpx.Client]
    ) -> None:
        archive = make_archive(http__stow_max_request_size=5000)
        datasets = [make_instance(BitsAllocated=8, PixelData=b"\x00" * 1000) for _ in range(5)]
        with use_archive(archive) as client:
            response = post(client, multipart_body([part10_bytes(ds) for ds in datasets]))

        assert response.status_code == 413
        assert "limit set by http.stow_max_request_size" in response.json()["detail"]
        assert stored_files(archive) == []

    def test_too_many_parts(
        self, make_archive: Callable[..., Archive], use_archive: Callable[[Archive], httpx.Client]
    ) -> None:
        archive = make_archive(http__stow_max_parts=2)
        with use_archive(archive) as client:
            response = post(
                client, multipart_body([part10_bytes(make_instance()) for _ in range(3)])
            )

        assert response.status_code == 413
        assert response.json()["detail"] == (
            "The request body has more than 2 parts, the limit set by http.stow_max_parts; "
            "send fewer instances per request"
        )
        assert stored_files(archive) == []

    def test_request_too_large_streamed(
        self, make_archive: Callable[..., Archive], use_archive: Callable[[Archive], httpx.Client]
    ) -> None:
        # Without Content-Length, the limit applies while the body arrives.
        archive = make_archive(http__stow_max_request_size=5000)
        body = multipart_body(
            [part10_bytes(make_instance(BitsAllocated=8, PixelData=b"\x00" * 1000))] * 5
        )
        with use_archive(archive) as client:
            response = client.post(
                "/dicomweb/studies",
                content=iter([body[:3000], body[3000:]]),
                headers={"Content-Type": MULTIPART},
            )

        assert response.status_code == 413
        assert "The request body is larger than 5000 bytes" in response.json()["detail"]
        assert stored_files(archive) == []
