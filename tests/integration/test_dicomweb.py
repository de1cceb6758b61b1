"""DICOMweb over the real HTTP server of `dicomvault serve`, driven by dicomweb-client.

Instances enter by C-STORE (DCMTK's storescu for generated ones, pynetdicom
for pydicom's compressed files in their own transfer syntax) and come back
over QIDO-RS, WADO-RS and WADO-URI.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import uid
from pydicom.encaps import get_frame

from tests.support.corpus import PYDICOM_TEST_FILES, BundledFile, bundled_files, write_instance
from tests.support.datasets import make_instance, new_uid
from tests.support.dcmtk import storescu
from tests.support.network import LOOPBACK
from tests.support.pixels import pick_corpus, pixels
from tests.support.scu import send_file_unchanged
from tests.support.server import DicomvaultServer, ServerFactory

pytestmark = pytest.mark.integration

TIMEOUT_SECONDS = 60
SYNTAXES = [
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGLSLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
]
LOSSLESS = {
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGLSLossless,
    uid.JPEG2000Lossless,
    uid.RLELossless,
}
CORPUS = pick_corpus(SYNTAXES)
MULTI_FRAME_NAME = "SC_rgb_rle_2frame.dcm"
JAPANESE_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"


@dataclasses.dataclass
class Archive:
    """A running server, its DICOMweb client and what was stored in it."""

    server: DicomvaultServer
    client: DICOMwebClient
    http: httpx.Client
    bundled: list[BundledFile]
    generated: list[pydicom.Dataset]
    multi_frame: BundledFile

    @property
    def all_sop_instance_uids(self) -> set[str]:
        """SOP Instance UIDs of every stored instance."""
        uids = {b.sop_instance_uid for b in self.bundled}
        uids |= {str(ds.SOPInstanceUID) for ds in self.generated}
        return uids | {self.multi_frame.sop_instance_uid}


def generated_instances() -> list[pydicom.Dataset]:
    """Two studies of small MR instances with known names, dates and modalities."""
    first_study, second_study = new_uid(), new_uid()
    first_series = new_uid()
    instances = [
        make_instance(
            StudyInstanceUID=first_study,
            SeriesInstanceUID=first_series,
            PatientName="Doe^John",
            PatientID="DW-1",
            StudyDate="20240115",
            AccessionNumber="ACC-1",
            InstanceNumber=str(number),
        )
        for number in (1, 2, 3)
    ]
    instances.append(
        make_instance(
            StudyInstanceUID=second_study,
            PatientName=JAPANESE_NAME,
            SpecificCharacterSet="ISO_IR 192",
            PatientID="DW-2",
            StudyDate="20230301",
            Modality="CT",
            StudyDescription="",
        )
    )
    for ds in instances:
        ds.Rows = 4
        ds.Columns = 4
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = np.arange(16, dtype="<u2").tobytes()
    return instances


@pytest.fixture(scope="module")
def archive(
    start_module_server: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Archive]:
    """A server holding pydicom's files of each transfer syntax and generated studies."""
    server = start_module_server()
    folder = tmp_path_factory.mktemp("generated")
    generated = generated_instances()
    paths = [write_instance(folder / f"{n}.dcm", ds) for n, ds in enumerate(generated)]
    run = storescu(server.port, paths, server.ae_title)
    for result in run.results.values():
        assert result.status == 0x0000, run.run.describe()

    for bundled in CORPUS:
        rsp = send_file_unchanged(server.port, bundled.path, server.ae_title)
        assert rsp.status == 0x0000, (bundled.name, rsp.error_comment)
    multi_frame = next(
        b for b in bundled_files(PYDICOM_TEST_FILES) if b.path.name == MULTI_FRAME_NAME
    )
    rsp = send_file_unchanged(server.port, multi_frame.path, server.ae_title)
    assert rsp.status == 0x0000, rsp.error_comment

    base = f"http://{LOOPBACK}:{server.http_port}"
    client = DICOMwebClient(f"{base}/dicomweb")
    client.set_http_retry_params(retry=False)
    with httpx.Client(base_url=base, timeout=TIMEOUT_SECONDS) as http:
        yield Archive(server, client, http, CORPUS, generated, multi_frame)


def values(result: dict[str, Any], tag: str) -> list[Any]:
    """Return the values of a DICOM JSON attribute, or [] when it has none."""
    element: dict[str, Any] = result.get(tag, {})
    return list(element.get("Value", []))


def sop_uids(results: list[dict[str, Any]]) -> set[str]:
    return {values(result, "00080018")[0] for result in results}


def study_uids(results: list[dict[str, Any]]) -> set[str]:
    return {values(result, "0020000D")[0] for result in results}


def parse_multipart(response: httpx.Response) -> list[tuple[str, bytes]]:
    """Split a multipart/related body into (part Content-Type, content) pairs."""
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related"), content_type
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"')
    parts = []
    for chunk in response.content.split(f"--{boundary}".encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        headers = dict(
            line.split(": ", 1) for line in head.decode().strip().splitlines() if ": " in line
        )
        parts.append((headers["Content-Type"], body[: -len(b"\r\n")]))
    return parts


def native_frame_bytes(bundled: BundledFile) -> bytes:
    """Return the first frame as native little endian bytes, as WADO-RS sends it decoded.

    Native pixel data keeps its Planar Configuration; decoded compressed
    pixel data is color-by-pixel.
    """
    reference = pixels(bundled.path)
    header = read_quietly(bundled.path.read_bytes())
    if not bundled.transfer_syntax_uid.is_compressed and header.get("PlanarConfiguration") == 1:
        reference = reference.transpose(2, 0, 1)
    return bytes(reference.astype(reference.dtype.newbyteorder("<")).tobytes())


def read_quietly(data: bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


class TestSearch:
    def test_every_stored_instance_found(self, archive: Archive) -> None:
        results = archive.client.search_for_instances(get_remaining=True)
        assert sop_uids(results) == archive.all_sop_instance_uids

    def test_instance_found_under_its_series(self, archive: Archive) -> None:
        for bundled in archive.bundled:
            results = archive.client.search_for_instances(
                bundled.study_instance_uid, bundled.series_instance_uid
            )
            assert sop_uids(results) == {bundled.sop_instance_uid}, bundled.name

    def test_study_result_attributes(self, archive: Archive) -> None:
        ds = archive.generated[0]
        (study,) = archive.client.search_for_studies(
            search_filters={"StudyInstanceUID": ds.StudyInstanceUID}
        )
        assert values(study, "00100010") == [{"Alphabetic": "Doe^John"}]
        assert values(study, "00201208") == [3]
        assert values(study, "00080061") == ["MR"]
        assert values(study, "00080056") == ["ONLINE"]
        (retrieve_url,) = values(study, "00081190")
        assert retrieve_url.endswith(f"/dicomweb/studies/{ds.StudyInstanceUID}")
        # An attribute without a value has no "Value" (PS3.18 F.2.5).
        assert study["00080090"] == {"vr": "PN"}

    def test_person_name_component_groups(self, archive: Archive) -> None:
        (study,) = archive.client.search_for_studies(search_filters={"PatientID": "DW-2"})
        assert values(study, "00100010") == [
            {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
        ]

    def test_match_ideographic_group(self, archive: Archive) -> None:
        results = archive.client.search_for_studies(search_filters={"PatientName": "山田*"})
        assert study_uids(results) == {archive.generated[3].StudyInstanceUID}

    def test_wildcard_and_tag_key(self, archive: Archive) -> None:
        results = archive.client.search_for_studies(search_filters={"00100010": "doe*"})
        assert study_uids(results) == {archive.generated[0].StudyInstanceUID}

    def test_date_range(self, archive: Archive) -> None:
        results = archive.client.search_for_studies(
            search_filters={"StudyDate": "20240101-20240131", "PatientID": "DW-*"}
        )
        assert study_uids(results) == {archive.generated[0].StudyInstanceUID}

    def test_uid_list(self, archive: Archive) -> None:
        requested = [str(ds.SOPInstanceUID) for ds in archive.generated[:2]]
        results = archive.client.search_for_instances(
            search_filters={"SOPInstanceUID": ",".join(requested)}
        )
        assert sop_uids(results) == set(requested)

    def test_fuzzy_person_name(self, archive: Archive) -> None:
        results = archive.client.search_for_studies(
            fuzzymatching=True, search_filters={"PatientName": "john"}
        )
        assert study_uids(results) == {archive.generated[0].StudyInstanceUID}

    def test_without_fuzzy_matching(self, archive: Archive) -> None:
        results = archive.client.search_for_studies(search_filters={"PatientName": "john"})
        assert results == []

    def test_includefield(self, archive: Archive) -> None:
        ds = archive.generated[0]
        results = archive.client.search_for_series(
            ds.StudyInstanceUID, fields=["BodyPartExamined", "00100020", "PatientName"]
        )
        (series,) = results
        assert "00180015" in series
        assert values(series, "00100020") == ["DW-1"]

    def test_includefield_all_instances(self, archive: Archive) -> None:
        ds = archive.generated[0]
        results = archive.client.search_for_instances(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, fields=["all"]
        )
        assert len(results) == 3
        for result in results:
            assert values(result, "00280010") == [4]
            assert values(result, "00100020") == ["DW-1"]

    def test_limit_and_offset(self, archive: Archive) -> None:
        ds = archive.generated[0]
        every = archive.client.search_for_instances(ds.StudyInstanceUID)
        pages = [
            archive.client.search_for_instances(ds.StudyInstanceUID, limit=2, offset=offset)
            for offset in (0, 2)
        ]
        assert [len(page) for page in pages] == [2, 1]
        assert sop_uids(pages[0] + pages[1]) == sop_uids(every)

    def test_no_match_is_204(self, archive: Archive) -> None:
        response = archive.http.get("/dicomweb/studies", params={"PatientID": "NOBODY"})
        assert response.status_code == 204
        assert response.content == b""

    def test_series_of_all_studies(self, archive: Archive) -> None:
        results = archive.client.search_for_series(search_filters={"Modality": "CT"})
        assert archive.generated[3].SeriesInstanceUID in {
            values(result, "0020000E")[0] for result in results
        }


class TestRetrieve:
    @pytest.mark.parametrize("bundled", CORPUS, ids=lambda b: b.transfer_syntax_uid.name)
    def test_as_stored(self, archive: Archive, bundled: BundledFile) -> None:
        ds = archive.client.retrieve_instance(
            bundled.study_instance_uid,
            bundled.series_instance_uid,
            bundled.sop_instance_uid,
            media_types=(("application/dicom", "*"),),
        )
        original = read_quietly(bundled.path.read_bytes())
        assert ds.file_meta.TransferSyntaxUID == bundled.transfer_syntax_uid
        assert ds.PixelData == original.PixelData

    @pytest.mark.parametrize("bundled", CORPUS, ids=lambda b: b.transfer_syntax_uid.name)
    def test_transcoded_to_explicit_little_endian(
        self, archive: Archive, bundled: BundledFile
    ) -> None:
        ds = archive.client.retrieve_instance(
            bundled.study_instance_uid,
            bundled.series_instance_uid,
            bundled.sop_instance_uid,
            media_types=(("application/dicom", uid.ExplicitVRLittleEndian),),
        )
        assert ds.file_meta.TransferSyntaxUID == uid.ExplicitVRLittleEndian
        assert ds.SOPInstanceUID == bundled.sop_instance_uid
        assert np.array_equal(ds.pixel_array, pixels(bundled.path)), bundled.name

    @pytest.mark.parametrize(
        "target", [uid.RLELossless, uid.JPEG2000Lossless], ids=["RLE", "JPEG2000Lossless"]
    )
    def test_transcoded_to_lossless_compression(self, archive: Archive, target: str) -> None:
        bundled = next(b for b in archive.bundled if b.transfer_syntax_uid in LOSSLESS)
        ds = archive.client.retrieve_instance(
            bundled.study_instance_uid,
            bundled.series_instance_uid,
            bundled.sop_instance_uid,
            media_types=(("application/dicom", target),),
        )
        assert ds.file_meta.TransferSyntaxUID == target
        assert np.array_equal(ds.pixel_array, pixels(bundled.path))

    def test_study_streams_every_instance(self, archive: Archive) -> None:
        ds = archive.generated[0]
        instances = archive.client.retrieve_study(ds.StudyInstanceUID)
        assert {str(item.SOPInstanceUID) for item in instances} == {
            str(item.SOPInstanceUID) for item in archive.generated[:3]
        }

    def test_series_parts_name_transfer_syntax(self, archive: Archive) -> None:
        bundled = archive.bundled[0]
        response = archive.http.get(
            f"/dicomweb/studies/{bundled.study_instance_uid}/series/{bundled.series_instance_uid}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        assert response.status_code == 200
        (part,) = parse_multipart(response)
        assert part[0] == f"application/dicom; transfer-syntax={bundled.transfer_syntax_uid}"
        assert read_quietly(part[1]).SOPInstanceUID == bundled.sop_instance_uid


class TestMetadata:
    def test_instance_metadata(self, archive: Archive) -> None:
        bundled = next(b for b in archive.bundled if b.transfer_syntax_uid.is_compressed)
        metadata = archive.client.retrieve_instance_metadata(
            bundled.study_instance_uid, bundled.series_instance_uid, bundled.sop_instance_uid
        )
        assert values(metadata, "00080018") == [bundled.sop_instance_uid]
        assert values(metadata, "00083002") == [bundled.transfer_syntax_uid]
        assert metadata["7FE00010"]["BulkDataURI"].endswith("/bulkdata/7FE00010")

    def test_series_metadata_has_every_instance(self, archive: Archive) -> None:
        ds = archive.generated[0]
        metadata = archive.client.retrieve_series_metadata(
            ds.StudyInstanceUID, ds.SeriesInstanceUID
        )
        assert sop_uids(metadata) == {str(item.SOPInstanceUID) for item in archive.generated[:3]}

    def test_pixel_data_bulk_data(self, archive: Archive) -> None:
        bundled = next(b for b in archive.bundled if b.transfer_syntax_uid == uid.RLELossless)
        metadata = archive.client.retrieve_instance_metadata(
            bundled.study_instance_uid, bundled.series_instance_uid, bundled.sop_instance_uid
        )
        uri = metadata["7FE00010"]["BulkDataURI"]
        path = uri.split("/dicomweb", 1)[1]
        response = archive.http.get(
            f"/dicomweb{path}",
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        )
        assert response.status_code == 200
        ((_, data),) = parse_multipart(response)
        reference = pixels(bundled.path)
        assert data == reference.astype(reference.dtype.newbyteorder("<")).tobytes()


class TestFrames:
    @pytest.mark.parametrize("bundled", CORPUS, ids=lambda b: b.transfer_syntax_uid.name)
    def test_decoded_frame(self, archive: Archive, bundled: BundledFile) -> None:
        (frame,) = archive.client.retrieve_instance_frames(
            bundled.study_instance_uid,
            bundled.series_instance_uid,
            bundled.sop_instance_uid,
            [1],
            media_types=(("application/octet-stream", uid.ExplicitVRLittleEndian),),
        )
        assert frame == native_frame_bytes(bundled)

    @pytest.mark.parametrize(
        "bundled",
        [b for b in CORPUS if b.transfer_syntax_uid.is_compressed],
        ids=lambda b: b.transfer_syntax_uid.name,
    )
    def test_stored_frame(self, archive: Archive, bundled: BundledFile) -> None:
        (frame,) = archive.client.retrieve_instance_frames(
            bundled.study_instance_uid,
            bundled.series_instance_uid,
            bundled.sop_instance_uid,
            [1],
            media_types=(("application/octet-stream", "*"),),
        )
        original = read_quietly(bundled.path.read_bytes())
        assert frame == get_frame(original.PixelData, 0, number_of_frames=1)

    def test_jpeg_frame_as_image_media_type(self, archive: Archive) -> None:
        bundled = next(b for b in archive.bundled if b.transfer_syntax_uid == uid.JPEGBaseline8Bit)
        response = archive.http.get(
            f"/dicomweb/studies/{bundled.study_instance_uid}/series/"
            f"{bundled.series_instance_uid}/instances/{bundled.sop_instance_uid}/frames/1",
            headers={"Accept": 'multipart/related; type="image/jpeg"'},
        )
        assert response.status_code == 200
        ((part_type, data),) = parse_multipart(response)
        assert part_type == f"image/jpeg; transfer-syntax={uid.JPEGBaseline8Bit}"
        assert data.startswith(b"\xff\xd8")

    def test_multi_frame_order(self, archive: Archive) -> None:
        bundled = archive.multi_frame
        frames = archive.client.retrieve_instance_frames(
            bundled.study_instance_uid,
            bundled.series_instance_uid,
            bundled.sop_instance_uid,
            [2, 1],
        )
        reference = pixels(bundled.path)
        assert frames == [reference[1].tobytes(), reference[0].tobytes()]


class TestRendered:
    def test_png_of_instance(self, archive: Archive) -> None:
        bundled = archive.bundled[0]
        data = archive.client.retrieve_instance_rendered(
            bundled.study_instance_uid,
            bundled.series_instance_uid,
            bundled.sop_instance_uid,
            media_types=("image/png",),
        )
        image = Image.open(io.BytesIO(data))
        reference = pixels(bundled.path)
        assert image.format == "PNG"
        assert image.size == (reference.shape[1], reference.shape[0])

    def test_jpeg_frame_with_window_and_viewport(self, archive: Archive) -> None:
        bundled = archive.multi_frame
        data = archive.client.retrieve_instance_frames_rendered(
            bundled.study_instance_uid,
            bundled.series_instance_uid,
            bundled.sop_instance_uid,
            [2],
            media_types=("image/jpeg",),
            params={"viewport": "50,50"},
        )
        image = Image.open(io.BytesIO(data))
        assert image.format == "JPEG"
        assert max(image.size) == 50

    def test_window_changes_image(self, archive: Archive) -> None:
        bundled = next(b for b in archive.bundled if b.transfer_syntax_uid == uid.RLELossless)
        path = (
            f"/dicomweb/studies/{bundled.study_instance_uid}/series/"
            f"{bundled.series_instance_uid}/instances/{bundled.sop_instance_uid}/rendered"
        )
        png = {"Accept": "image/png"}
        narrow = archive.http.get(path, params={"window": "0,1"}, headers=png)
        wide = archive.http.get(path, params={"window": "0,100000"}, headers=png)
        assert narrow.status_code == wide.status_code == 200
        assert narrow.content != wide.content

    def test_study_thumbnail(self, archive: Archive) -> None:
        ds = archive.generated[0]
        response = archive.http.get(f"/dicomweb/studies/{ds.StudyInstanceUID}/thumbnail")
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(response.content)).size == (128, 128)


class TestWadoUri:
    def test_dicom_file(self, archive: Archive) -> None:
        bundled = next(b for b in archive.bundled if b.transfer_syntax_uid.is_compressed)
        response = archive.http.get(
            "/wado",
            params={
                "requestType": "WADO",
                "studyUID": bundled.study_instance_uid,
                "seriesUID": bundled.series_instance_uid,
                "objectUID": bundled.sop_instance_uid,
                "contentType": "application/dicom",
            },
        )
        assert response.status_code == 200
        ds = read_quietly(response.content)
        assert ds.file_meta.TransferSyntaxUID == uid.ExplicitVRLittleEndian
        assert np.array_equal(ds.pixel_array, pixels(bundled.path))

    def test_jpeg(self, archive: Archive) -> None:
        bundled = archive.bundled[0]
        response = archive.http.get(
            "/wado",
            params={
                "requestType": "WADO",
                "studyUID": bundled.study_instance_uid,
                "seriesUID": bundled.series_instance_uid,
                "objectUID": bundled.sop_instance_uid,
                "columns": "32",
            },
        )
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(response.content)).size[0] == 32


def instance_path(bundled: BundledFile) -> str:
    return (
        f"/dicomweb/studies/{bundled.study_instance_uid}/series/{bundled.series_instance_uid}"
        f"/instances/{bundled.sop_instance_uid}"
    )


DICOM_PARTS = 'multipart/related; type="application/dicom"'
BAD_REQUESTS = [
    pytest.param("/dicomweb/studies?NoSuchKeyword=1", {}, 400, "Unknown query parameter", id="key"),
    pytest.param("/dicomweb/studies?StudyDate=2024-13", {}, 400, "Invalid date", id="date"),
    pytest.param("/dicomweb/studies?limit=-1", {}, 400, "'limit' must be", id="limit"),
    pytest.param("/dicomweb/studies?fuzzymatching=yes", {}, 400, "true or false", id="fuzzy"),
    pytest.param("/dicomweb/studies?SOPInstanceUID=1.2", {}, 400, "cannot be matched", id="level"),
    pytest.param(
        "/dicomweb/instances?SOPInstanceUID=1.2*",
        {},
        400,
        "may not contain wildcards",
        id="uid-wildcard",
    ),
    pytest.param("/dicomweb/studies/not-a-uid", {}, 400, "Invalid Study Instance UID", id="uid"),
    pytest.param("/dicomweb/studies/1.2.3.4.5", {}, 404, "No study 1.2.3.4.5", id="unknown"),
    pytest.param(
        "/dicomweb/studies/1.2.3/series/1.2.4/instances/1.2.5/metadata",
        {},
        404,
        "No instance 1.2.5",
        id="unknown-instance",
    ),
    pytest.param(
        "/dicomweb/studies", {"Accept": "application/xml"}, 406, "application/dicom+json", id="qido"
    ),
    pytest.param("/wado?requestType=WADO", {}, 400, "'studyUID' is missing", id="wado-uri"),
    pytest.param("/wado?requestType=X", {}, 400, "requestType must be WADO", id="wado-type"),
]


class TestBadInput:
    @pytest.mark.parametrize(("path", "headers", "code", "message"), BAD_REQUESTS)
    def test_status_and_message(
        self, archive: Archive, path: str, headers: dict[str, str], code: int, message: str
    ) -> None:
        response = archive.http.get(path, headers=headers)
        assert response.status_code == code, response.text
        assert message in response.json()["detail"]

    @pytest.mark.parametrize(
        ("suffix", "accept", "code", "message"),
        [
            ("", "application/dicom", 406, "multipart/related"),
            ("", f"{DICOM_PARTS}; transfer-syntax={uid.JPEGBaseline8Bit}", 406, "cannot be"),
            ("", f"{DICOM_PARTS}; transfer-syntax=abc", 400, "Invalid transfer-syntax"),
            ("/frames/0", "*/*", 400, "Invalid frame list"),
            ("/frames/99", "*/*", 404, "Frame 99 does not exist"),
            ("/frames/1", 'multipart/related; type="image/jls"', 406, "available as"),
            ("/rendered", "image/gif", 406, "image/jpeg or image/png"),
            ("/rendered?window=1", "image/png", 400, "Invalid window"),
            ("/rendered?annotation=patient", "image/png", 400, "Unknown rendering parameter"),
            ("/bulkdata/XYZ", "*/*", 400, "Invalid bulk data tag"),
            ("/bulkdata/00091001", "*/*", 404, "has no binary attribute"),
        ],
        ids=[
            "single-part",
            "no-encoder",
            "syntax-param",
            "frame-zero",
            "frame-range",
            "frame-type",
            "render-type",
            "window",
            "annotation",
            "bulk-tag",
            "bulk-missing",
        ],
    )
    def test_instance_resources(
        self, archive: Archive, suffix: str, accept: str, code: int, message: str
    ) -> None:
        bundled = next(b for b in archive.bundled if b.transfer_syntax_uid == uid.RLELossless)
        response = archive.http.get(instance_path(bundled) + suffix, headers={"Accept": accept})
        assert response.status_code == code, response.text
        assert message in response.json()["detail"]

    def test_client_raises_for_unknown_study(self, archive: Archive) -> None:
        with pytest.raises(requests.HTTPError) as excinfo:
            archive.client.retrieve_study_metadata("1.2.3.4.5.6")
        assert excinfo.value.response.status_code == 404


class TestSettings:
    def test_public_url_in_responses(self, start_server: ServerFactory) -> None:
        server = start_server(config='[http]\npublic_url = "https://pacs.example.org/archive"\n')
        ds = make_instance()
        path = write_instance(server.workdir / "one.dcm", ds)
        assert send_file_unchanged(server.port, path, server.ae_title).status == 0x0000
        response = httpx.get(
            f"http://{LOOPBACK}:{server.http_port}/dicomweb/studies", timeout=TIMEOUT_SECONDS
        )
        (study,) = response.json()
        assert values(study, "00081190") == [
            f"https://pacs.example.org/archive/dicomweb/studies/{ds.StudyInstanceUID}"
        ]

    def test_cors_preflight(self, start_server: ServerFactory) -> None:
        server = start_server(
            config='[http]\ncors_allow_origins = ["https://viewer.example.org"]\n'
        )
        url = f"http://{LOOPBACK}:{server.http_port}/dicomweb/studies"
        headers = {
            "Origin": "https://viewer.example.org",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept",
        }
        preflight = httpx.options(url, headers=headers, timeout=TIMEOUT_SECONDS)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://viewer.example.org"
        other = httpx.get(url, headers={"Origin": "https://other.example.org"})
        assert "access-control-allow-origin" not in other.headers

    def test_cors_off_by_default(self, start_server: ServerFactory) -> None:
        server = start_server()
        response = httpx.get(
            f"http://{LOOPBACK}:{server.http_port}/dicomweb/studies",
            headers={"Origin": "https://viewer.example.org"},
            timeout=TIMEOUT_SECONDS,
        )
        assert response.status_code == 204
        assert "access-control-allow-origin" not in response.headers
