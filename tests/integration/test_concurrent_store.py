"""Several storescu associations at once, all storing into one new study."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.support.corpus import make_uid, stored_files, write_instance
from tests.support.dcmtk import StoreRun, findscu, storescu
from tests.support.server import ServerFactory

pytestmark = pytest.mark.integration

ASSOCIATIONS = 4
INSTANCES_PER_ASSOCIATION = 15


def write_study(folder: Path) -> list[list[Path]]:
    """Write one study of CT instances, split into one file list per association."""
    study_uid = make_uid("concurrent", "study")
    batches: list[list[Path]] = []
    for association in range(ASSOCIATIONS):
        batch = []
        for number in range(INSTANCES_PER_ASSOCIATION):
            ds = Dataset()
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = make_uid("concurrent", str(association), str(number))
            ds.StudyInstanceUID = study_uid
            # Each association also creates its own series inside the shared study.
            ds.SeriesInstanceUID = make_uid("concurrent", "series", str(association))
            ds.PatientName = "CONCURRENT^TEST"
            ds.PatientID = "CONCURRENT-1"
            ds.Modality = "CT"
            ds.InstanceNumber = number + 1
            batch.append(write_instance(folder / f"a{association}" / f"{number}.dcm", ds))
        batches.append(batch)
    return batches


def test_parallel_associations_store_all(start_server: ServerFactory, tmp_path: Path) -> None:
    server = start_server()
    batches = write_study(tmp_path / "corpus")

    with concurrent.futures.ThreadPoolExecutor(max_workers=ASSOCIATIONS) as pool:
        runs: list[StoreRun] = list(
            pool.map(lambda batch: storescu(server.port, batch, server.ae_title), batches)
        )

    statuses = [result.status for run in runs for result in run.results.values()]
    assert statuses == [0x0000] * ASSOCIATIONS * INSTANCES_PER_ASSOCIATION
    assert len(stored_files(server.data_dir)) == ASSOCIATIONS * INSTANCES_PER_ASSOCIATION

    found = findscu(
        server.port,
        {
            "QueryRetrieveLevel": "STUDY",
            "PatientID": "CONCURRENT-1",
            "StudyInstanceUID": "",
            "NumberOfStudyRelatedInstances": "",
            "NumberOfStudyRelatedSeries": "",
        },
        server.ae_title,
    )
    assert found.status == 0x0000, found.describe()
    assert len(found.responses) == 1
    assert found.responses[0].NumberOfStudyRelatedInstances == (
        ASSOCIATIONS * INSTANCES_PER_ASSOCIATION
    )
    assert found.responses[0].NumberOfStudyRelatedSeries == ASSOCIATIONS
