"""The console's search API: query language, levels, sorting, paging and errors."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import Engine

from dicomvault.index.writer import IndexWriter
from tests.support.datasets import make_instance
from tests.unit.test_index import stored_instance

PATIENTS = [
    ("SEARCH-0", "Smith^John", "CT", "20200615"),
    ("SEARCH-1", "Smith^Anna", "MR", "20210301"),
    ("SEARCH-2", "Jones^Ann", "CT", "20191231"),
]


@pytest.fixture
def indexed(migrated_engine: Engine) -> None:
    writer = IndexWriter(migrated_engine)
    for number, (patient_id, name, modality, date) in enumerate(PATIENTS):
        ds = make_instance(
            PatientID=patient_id, PatientName=name, Modality=modality, StudyDate=date
        )
        writer.add_instance(stored_instance(ds, f"search/{number}.dcm"))


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [match["values"]["PatientID"][0] for match in response.json()["matches"]]


@pytest.mark.usefixtures("indexed")
class TestSearch:
    def test_query_language(self, client: httpx.Client) -> None:
        response = client.get("/api/search", params={"q": "PatientName:SMITH* AND NOT Modality:MR"})

        assert ids(response) == ["SEARCH-0"]
        assert response.json()["total"] == 1

    def test_sorted_descending_and_paged(self, client: httpx.Client) -> None:
        params = {"q": "Modality:CT OR Modality:MR", "sort": "-StudyDate", "limit": 2}

        first = client.get("/api/search", params=params)
        second = client.get("/api/search", params={**params, "offset": 2})

        assert ids(first) == ["SEARCH-1", "SEARCH-0"]
        assert ids(second) == ["SEARCH-2"]
        assert first.json()["total"] == 3

    def test_series_level(self, client: httpx.Client) -> None:
        response = client.get("/api/search", params={"q": "Modality:MR", "level": "series"})

        assert ids(response) == ["SEARCH-1"]
        assert "SeriesInstanceUID" in response.json()["matches"][0]["values"]

    def test_syntax_error_with_column(self, client: httpx.Client) -> None:
        response = client.get("/api/search", params={"q": "Modality:CT AND (PatientID:X"})

        assert response.status_code == 400
        assert response.json()["column"] == 29
        assert "expected ')'" in response.json()["detail"]

    def test_unknown_sort_key(self, client: httpx.Client) -> None:
        response = client.get("/api/search", params={"q": "Modality:CT", "sort": "Nope"})

        assert response.status_code == 400
        assert "Cannot sort by 'Nope'" in response.json()["detail"]

    def test_login_required(self, server_url: str) -> None:
        response = httpx.get(f"{server_url}/api/search", params={"q": "Modality:CT"})

        assert response.status_code == 401
