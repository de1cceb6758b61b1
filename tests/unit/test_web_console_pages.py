"""Console search, drill-down and image routes, and the CSV and zip download API."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from sqlalchemy import Engine

from dicomvault.index.users import UserStore
from dicomvault.users import Role
from dicomvault.web.ui.query_form import FormValueError, build_query, escape_value
from dicomvault.web.ui.tag_dump import dump
from dicomvault.web.zip_stream import stream_zip
from tests.unit.conftest import WEB_TIMEOUT_SECONDS
from tests.unit.test_web_console import USER_PASSWORD, console_login

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CT = pydicom.dcmread(TEST_FILES / "CT_small.dcm", stop_before_pixels=True)
MR = pydicom.dcmread(TEST_FILES / "MR_small.dcm", stop_before_pixels=True)
CT_INSTANCE = (
    f"/studies/{CT.StudyInstanceUID}/series/{CT.SeriesInstanceUID}/instances/{CT.SOPInstanceUID}"
)


@pytest.fixture(scope="module")
def index_backend() -> str:
    """Run on SQLite only, because these tests exercise HTTP routes and pages.

    The index queries behind them run on both back-ends in test_index,
    test_users and test_web_search.
    """
    return "sqlite"


@pytest.fixture
def stored(client: httpx.Client) -> None:
    """Store CT_small.dcm and MR_small.dcm over STOW-RS."""
    for name in ("CT_small.dcm", "MR_small.dcm"):
        response = client.post(
            "/dicomweb/studies",
            content=(TEST_FILES / name).read_bytes(),
            headers={"Content-Type": "application/dicom"},
        )
        assert response.status_code == 200, response.text


@pytest.fixture
def viewer_token(migrated_engine: Engine, admin_token: str) -> str:
    """An API token of the user "viewer", who has the user role."""
    store = UserStore(migrated_engine)
    viewer = store.add("viewer", Role.USER, USER_PASSWORD)
    return store.create_token(viewer, "tests")[1]


@pytest.fixture
def viewer_api(server_url: str, viewer_token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server_url,
        timeout=WEB_TIMEOUT_SECONDS,
        headers={"Authorization": f"Bearer {viewer_token}"},
    ) as http_client:
        yield http_client


@pytest.fixture
def viewer_browser(server_url: str, viewer_token: str) -> Iterator[httpx.Client]:
    """A client logged in to the console as "viewer", with the session cookie."""
    with httpx.Client(base_url=server_url, timeout=WEB_TIMEOUT_SECONDS) as http_client:
        console_login(http_client, "viewer", USER_PASSWORD)
        yield http_client


@pytest.fixture
def anonymous(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=WEB_TIMEOUT_SECONDS) as http_client:
        yield http_client


class TestQueryForm:
    def test_fields_joined_with_and(self) -> None:
        form = {"PatientName": "SMITH*", "Modality": "CT", "StudyDateFrom": "2020-01-01"}

        query = build_query(form, "study")

        assert query.text == "PatientName:SMITH* AND Modality:CT AND StudyDate:[20200101 TO *]"

    def test_advanced_text_first(self) -> None:
        query = build_query({"q": "Modality:CT OR Modality:MR", "PatientID": "7"}, "study")

        assert query.text == "(Modality:CT OR Modality:MR) AND PatientID:7"

    def test_empty_form_matches_all(self) -> None:
        assert build_query({}, "series").text == "SeriesInstanceUID:*"

    def test_reversed_dates_rejected(self) -> None:
        form = {"StudyDateFrom": "2021-01-01", "StudyDateTo": "2020-01-01"}

        with pytest.raises(FormValueError, match="before its start") as info:
            build_query(form, "study")
        assert info.value.field == "StudyDateTo"

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("DOE JOHN", "DOE\\ JOHN"), ("A(1)", "A\\(1\\)"), ("OR", "\\OR"), ("SM?TH*", "SM?TH*")],
    )
    def test_escape_value(self, value: str, expected: str) -> None:
        assert escape_value(value) == expected


class TestTagDump:
    def test_sequence_items_nested(self) -> None:
        ds = pydicom.dcmread(TEST_FILES / "rtplan.dcm")

        rows = {row.keyword: row for row in dump(ds)}

        sequence = rows["FractionGroupSequence"]
        assert sequence.is_sequence
        assert sequence.value == f"{len(ds.FractionGroupSequence)} items"
        assert "NumberOfFractionsPlanned" in {row.keyword for row in sequence.items[0]}

    def test_binary_value_as_length(self) -> None:
        ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")

        rows = {row.keyword: row for row in dump(ds)}

        assert rows["PixelData"].value == f"({len(ds.PixelData)} bytes)"
        assert rows["PatientName"].value == "CompressedSamples^CT1"
        assert rows["PatientName"].tag == "(0010,0010)"


class TestZipStream:
    def test_members_in_order(self) -> None:
        members = [("a/one.dcm", iter([b"abc", b"def"])), ("b/two.dcm", iter([b""]))]

        data = b"".join(stream_zip(members))

        archive = zipfile.ZipFile(io.BytesIO(data))
        assert archive.namelist() == ["a/one.dcm", "b/two.dcm"]
        assert archive.read("a/one.dcm") == b"abcdef"
        assert archive.testzip() is None


@pytest.mark.usefixtures("stored")
class TestSearchCsv:
    def test_rows_and_columns(self, viewer_api: httpx.Client) -> None:
        response = viewer_api.get(
            "/api/search.csv", params={"q": "PatientName:COMPRESSED*", "sort": "PatientID"}
        )

        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert "attachment" in response.headers["content-disposition"]
        assert [row["PatientID"] for row in rows] == ["1CT1", "4MR1"]
        assert rows[0]["ModalitiesInStudy"] == "CT"
        assert rows[0]["StudyInstanceUID"] == CT.StudyInstanceUID

    def test_syntax_error(self, viewer_api: httpx.Client) -> None:
        response = viewer_api.get("/api/search.csv", params={"q": "PatientName:"})

        assert response.status_code == 400
        assert response.json()["column"] == 13

    def test_login_required(self, anonymous: httpx.Client) -> None:
        response = anonymous.get("/api/search.csv", params={"q": "Modality:CT"})

        assert response.status_code == 401


@pytest.mark.usefixtures("stored")
class TestArchiveZip:
    def test_study(self, viewer_api: httpx.Client) -> None:
        response = viewer_api.get(f"/api/studies/{CT.StudyInstanceUID}/archive.zip")

        archive = zipfile.ZipFile(io.BytesIO(response.content))
        name = f"{CT.StudyInstanceUID}/{CT.SeriesInstanceUID}/{CT.SOPInstanceUID}.dcm"
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/zip"
        assert archive.namelist() == [name]
        ds = pydicom.dcmread(io.BytesIO(archive.read(name)))
        assert ds.SOPInstanceUID == CT.SOPInstanceUID
        assert ds.PatientName == "CompressedSamples^CT1"

    def test_series(self, viewer_api: httpx.Client) -> None:
        path = f"/api/studies/{MR.StudyInstanceUID}/series/{MR.SeriesInstanceUID}/archive.zip"

        response = viewer_api.get(path)

        assert response.status_code == 200
        assert zipfile.ZipFile(io.BytesIO(response.content)).namelist() == [
            f"{MR.StudyInstanceUID}/{MR.SeriesInstanceUID}/{MR.SOPInstanceUID}.dcm"
        ]

    def test_unknown_study(self, viewer_api: httpx.Client) -> None:
        response = viewer_api.get("/api/studies/1.2.3.4/archive.zip")

        assert response.status_code == 404

    def test_malformed_uid(self, viewer_api: httpx.Client) -> None:
        response = viewer_api.get("/api/studies/not-a-uid/archive.zip")

        assert response.status_code == 400

    def test_login_required(self, anonymous: httpx.Client) -> None:
        response = anonymous.get(f"/api/studies/{CT.StudyInstanceUID}/archive.zip")

        assert response.status_code == 401


@pytest.mark.usefixtures("stored")
class TestSearchPage:
    def test_results_by_wildcard(self, viewer_browser: httpx.Client) -> None:
        response = viewer_browser.get(
            "/console/search", params={"run": "1", "PatientName": "compressed*"}
        )

        assert response.status_code == 200
        assert "Showing 1–2 of 2" in response.text
        assert f'href="/console/studies/{CT.StudyInstanceUID}"' in response.text
        assert "/api/search.csv?q=PatientName%3Acompressed%2A" in response.text

    def test_htmx_gets_results_only(self, viewer_browser: httpx.Client) -> None:
        response = viewer_browser.get(
            "/console/search",
            params={"run": "1", "Modality": "MR"},
            headers={"HX-Request": "true"},
        )

        assert response.text.lstrip().startswith('<div id="results"')
        assert "CompressedSamples, MR1" in response.text
        assert "CompressedSamples, CT1" not in response.text

    def test_error_with_caret(self, viewer_browser: httpx.Client) -> None:
        response = viewer_browser.get(
            "/console/search", params={"run": "1", "q": "Modality:CT AND (PatientID:X"}
        )

        assert "error at column 29" in response.text
        assert "Modality:CT AND (PatientID:X\n" + " " * 28 + "^" in response.text

    def test_sorted_descending(self, viewer_browser: httpx.Client) -> None:
        response = viewer_browser.get(
            "/console/search", params={"run": "1", "PatientName": "*", "sort": "-StudyDate"}
        )

        dates = re.findall(r"<td>(\d{4}-\d{2}-\d{2})", response.text)
        assert dates == ["2004-08-26", "2004-01-19"]
        assert 'aria-sort="descending"' in response.text


@pytest.mark.usefixtures("stored")
class TestDrillDownPages:
    def test_patient(self, viewer_browser: httpx.Client) -> None:
        response = viewer_browser.get("/console/patients", params={"id": "1CT1"})

        assert response.status_code == 200
        assert "CompressedSamples, CT1" in response.text
        assert f"/console/studies/{CT.StudyInstanceUID}" in response.text

    def test_study(self, viewer_browser: httpx.Client) -> None:
        response = viewer_browser.get(f"/console/studies/{CT.StudyInstanceUID}")

        assert response.status_code == 200
        assert f"/api/studies/{CT.StudyInstanceUID}/archive.zip" in response.text
        assert f"/series/{CT.SeriesInstanceUID}/thumbnail" in response.text

    def test_series(self, viewer_browser: httpx.Client) -> None:
        response = viewer_browser.get(
            f"/console/studies/{CT.StudyInstanceUID}/series/{CT.SeriesInstanceUID}"
        )

        assert response.status_code == 200
        assert f"/console{CT_INSTANCE}" in response.text

    def test_instance_tags(self, viewer_browser: httpx.Client) -> None:
        response = viewer_browser.get(f"/console{CT_INSTANCE}")

        assert response.status_code == 200
        assert "(0010,0010)" in response.text
        assert "CompressedSamples^CT1" in response.text
        assert "(0002,0010)" in response.text
        assert 'id="viewer-image"' in response.text

    def test_unknown_study_page(self, viewer_browser: httpx.Client) -> None:
        response = viewer_browser.get("/console/studies/1.2.3.4")

        assert response.status_code == 404
        assert "No study 1.2.3.4 is stored." in response.text

    def test_malformed_uid_page(self, viewer_browser: httpx.Client) -> None:
        response = viewer_browser.get("/console/studies/not-a-uid")

        assert response.status_code == 400
        assert response.headers["content-type"].startswith("text/html")

    def test_pages_need_login(self, anonymous: httpx.Client) -> None:
        response = anonymous.get(f"/console{CT_INSTANCE}")

        assert response.status_code == 303
        assert response.headers["location"].startswith("/console/login?next=")


@pytest.mark.usefixtures("stored")
class TestImages:
    def test_frame_with_window(self, viewer_browser: httpx.Client) -> None:
        response = viewer_browser.get(
            f"/console/images{CT_INSTANCE}/frames/1", params={"window": "40,400"}
        )

        assert response.status_code == 200
        assert response.headers["content-type"] == "image/jpeg"
        assert response.content.startswith(b"\xff\xd8")

    def test_frame_as_png(self, viewer_browser: httpx.Client) -> None:
        response = viewer_browser.get(
            f"/console/images{CT_INSTANCE}/frames/1", params={"format": "png"}
        )

        assert response.headers["content-type"] == "image/png"

    def test_series_thumbnail(self, viewer_browser: httpx.Client) -> None:
        response = viewer_browser.get(
            f"/console/images/studies/{CT.StudyInstanceUID}/series/{CT.SeriesInstanceUID}/thumbnail"
        )

        assert response.status_code == 200
        assert response.headers["content-type"] == "image/jpeg"

    def test_missing_frame(self, viewer_browser: httpx.Client) -> None:
        response = viewer_browser.get(f"/console/images{CT_INSTANCE}/frames/2")

        assert response.status_code == 404

    def test_bad_window(self, viewer_browser: httpx.Client) -> None:
        response = viewer_browser.get(
            f"/console/images{CT_INSTANCE}/frames/1", params={"window": "abc"}
        )

        assert response.status_code == 400

    def test_login_required(self, anonymous: httpx.Client) -> None:
        response = anonymous.get(f"/console/images{CT_INSTANCE}/frames/1")

        assert response.status_code == 401

    def test_api_token_not_enough(self, viewer_api: httpx.Client) -> None:
        response = viewer_api.get(f"/console/images{CT_INSTANCE}/frames/1")

        assert response.status_code == 401
