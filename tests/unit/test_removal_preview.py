"""The preview of a study or series deletion: descriptions and instance counts."""

from __future__ import annotations

from sqlalchemy import Engine

from dicomvault.index.removal import preview_removal
from dicomvault.index.writer import IndexWriter
from tests.support.datasets import make_instance
from tests.unit.test_index import stored_instance


def test_study_and_series(migrated_engine: Engine) -> None:
    writer = IndexWriter(migrated_engine)
    first = make_instance(PatientName="Doe^Jane", StudyDescription="Head", Modality="CT")
    second = make_instance(
        StudyInstanceUID=first.StudyInstanceUID,
        PatientName="Doe^Jane",
        StudyDescription="Head",
        Modality="MR",
        SeriesDescription="T1",
    )
    writer.add_instance(stored_instance(first, "aa/bb/1.dcm"))
    writer.add_instance(stored_instance(second, "inplace:/srv/import/2.dcm"))

    study = preview_removal(migrated_engine, first.StudyInstanceUID)
    one_series = preview_removal(migrated_engine, first.StudyInstanceUID, second.SeriesInstanceUID)

    assert study is not None
    assert study.patient_name == "Doe^Jane"
    assert study.study_description == "Head"
    assert (study.instances, study.in_place_instances) == (2, 1)
    assert study.modality == ""
    assert one_series is not None
    assert (one_series.instances, one_series.in_place_instances) == (1, 1)
    assert one_series.modality == "MR"
    assert one_series.series_description == "T1"


def test_unknown_or_foreign_series(migrated_engine: Engine) -> None:
    ds = make_instance()
    IndexWriter(migrated_engine).add_instance(stored_instance(ds))

    assert preview_removal(migrated_engine, "1.2.3") is None
    assert preview_removal(migrated_engine, "1.2.3", ds.SeriesInstanceUID) is None
    assert preview_removal(migrated_engine, ds.StudyInstanceUID, "1.2.3") is None
