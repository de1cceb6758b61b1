"""The usage API: counts per level and bytes of stored and in-place files."""

from __future__ import annotations

import httpx
from sqlalchemy import Engine

from dicomvault.index.writer import IndexWriter
from tests.support.datasets import make_instance
from tests.unit.test_index import stored_instance


def test_empty_index(client: httpx.Client) -> None:
    response = client.get("/api/usage")

    assert response.status_code == 200
    body = response.json()
    assert body["patients"] == body["studies"] == body["series"] == body["instances"] == 0
    assert body["stored_bytes"] == body["in_place_bytes"] == 0
    assert body["storage_free_bytes"] > 0


def test_counts_and_bytes(client: httpx.Client, migrated_engine: Engine) -> None:
    writer = IndexWriter(migrated_engine)
    first = make_instance(PatientID="USAGE-1")
    same_series = make_instance(
        PatientID="USAGE-1",
        StudyInstanceUID=first.StudyInstanceUID,
        SeriesInstanceUID=first.SeriesInstanceUID,
    )
    other_patient = make_instance(PatientID="USAGE-2")
    writer.add_instance(stored_instance(first, "aa/bb/1.dcm"))
    writer.add_instance(stored_instance(same_series, "aa/bb/2.dcm"))
    writer.add_instance(stored_instance(other_patient, "inplace:/srv/import/3.dcm"))

    response = client.get("/api/usage")

    body = response.json()
    assert body["patients"] == 2
    assert body["studies"] == 2
    assert body["series"] == 2
    assert body["instances"] == 3
    assert body["stored_instances"] == 2
    assert body["stored_bytes"] == 2000
    assert body["in_place_instances"] == 1
    assert body["in_place_bytes"] == 1000
