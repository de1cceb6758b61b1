"""Deleting a study or a series over the API: files stored by the archive go, in-place stay."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomvault.archive import Archive
from dicomvault.dicom.header import describe_instance
from dicomvault.index.usage import count_usage
from dicomvault.index.writer import IndexWriter, StoredInstance
from dicomvault.ingest.manager import TaskManager
from tests.support.datasets import encode_dataset, make_instance


def store(manager: TaskManager, ds: Dataset) -> Path:
    """Store ``ds`` through the archive; return the path of its file."""
    context = manager.context
    archive = Archive(context.settings, context.engine, context.storage)
    key = archive.store(encode_dataset(ds), ExplicitVRLittleEndian).storage_key
    return context.settings.data_dir / "storage" / key


def index_in_place(manager: TaskManager, ds: Dataset, path: Path) -> None:
    path.write_bytes(b"an in-place file")
    header = describe_instance(ds, ExplicitVRLittleEndian)
    IndexWriter(manager.context.engine).add_instance(
        StoredInstance(header, f"inplace:{path}", 16, "")
    )


class TestDeleteStudy:
    def test_files_deleted_in_place_kept(
        self, client: httpx.Client, manager: TaskManager, root: Path
    ) -> None:
        first = make_instance()
        second = make_instance(StudyInstanceUID=first.StudyInstanceUID)
        stored = [store(manager, first)]
        in_place = root / "kept.dcm"
        index_in_place(manager, second, in_place)
        other = store(manager, make_instance())

        response = client.delete(f"/api/studies/{first.StudyInstanceUID}")

        assert response.status_code == 200, response.text
        assert response.json() == {"removed_instances": 2, "deleted_files": 1, "kept_in_place": 1}
        assert not stored[0].exists()
        assert in_place.exists()
        assert other.exists()
        assert count_usage(manager.context.engine).studies == 1

    def test_unknown_study(self, client: httpx.Client) -> None:
        response = client.delete("/api/studies/1.2.3.4")

        assert response.status_code == 404
        assert response.json()["detail"] == "No study with UID 1.2.3.4 is indexed"

    def test_malformed_uid(self, client: httpx.Client) -> None:
        response = client.delete("/api/studies/not-a-uid")

        assert response.status_code == 400
        assert response.json()["detail"].startswith(
            "Invalid Study Instance UID 'not-a-uid': a UID is up to 64 characters"
        )


class TestDeleteSeries:
    def test_only_that_series(self, client: httpx.Client, manager: TaskManager) -> None:
        first = make_instance()
        sibling = make_instance(StudyInstanceUID=first.StudyInstanceUID)
        deleted = store(manager, first)
        kept = store(manager, sibling)

        response = client.delete(
            f"/api/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
        )

        assert response.status_code == 200, response.text
        assert response.json() == {"removed_instances": 1, "deleted_files": 1, "kept_in_place": 0}
        assert not deleted.exists()
        assert kept.exists()
        usage = count_usage(manager.context.engine)
        assert (usage.studies, usage.series, usage.instances) == (1, 1, 1)

    def test_series_of_another_study(self, client: httpx.Client, manager: TaskManager) -> None:
        ds = make_instance()
        path = store(manager, ds)

        response = client.delete(f"/api/studies/1.2.3/series/{ds.SeriesInstanceUID}")

        assert response.status_code == 404
        assert response.json()["detail"] == (
            f"No series with UID {ds.SeriesInstanceUID} is indexed in study 1.2.3"
        )
        assert path.exists()

    @pytest.mark.parametrize("series_uid", ["1.2.x", "1." + "2" * 70], ids=["letter", "long"])
    def test_malformed_series_uid(self, client: httpx.Client, series_uid: str) -> None:
        response = client.delete(f"/api/studies/1.2.3/series/{series_uid}")

        assert response.status_code == 400
        assert "Invalid Series Instance UID" in response.json()["detail"]
