"""Unit tests for the SQL index: engine set-up, migrations, writing and searching.

Tests taking the ``index_url`` fixture run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    UltrasoundImageStorage,
)
from sqlalchemy import Engine, event, func, inspect, select, text
from sqlalchemy.sql.schema import Table

from dicomvault.archive import Archive
from dicomvault.dicom.attributes import Level
from dicomvault.dicom.header import describe_instance
from dicomvault.dicom.matching import MatchOptions, parse_identifier
from dicomvault.dicom.query_language import parse, to_query
from dicomvault.index import search as index_search
from dicomvault.index.database import (
    MIGRATIONS_DIR,
    DatabaseError,
    create_index_engine,
    migrate,
    newest_revision,
    normalize_url,
    open_index_engine,
    schema_revision,
)
from dicomvault.index.schema import METADATA, instances, patients, series, studies
from dicomvault.index.search import IndexSearch, SearchResult
from dicomvault.index.writer import (
    DuplicateInstanceError,
    IndexOutcome,
    IndexWriter,
    StoredInstance,
)
from dicomvault.storage.in_place import in_place_key
from tests.support.corpus import PYDICOM_CHARSET_FILES
from tests.support.datasets import (
    add_raw_element,
    encode_dataset,
    file_dataset,
    make_identifier,
    make_instance,
    new_uid,
)
from tests.support.postgres import PostgresDatabases

INDEX_TABLES = {
    "patients",
    "studies",
    "series",
    "instances",
    "indexed_files",
    "ingest_tasks",
    "ingest_task_files",
    "users",
    "api_tokens",
    "sessions",
}
CASE_SENSITIVE = MatchOptions(person_name_case_insensitive=False)


def count_rows(engine: Engine, table: Table) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def column_values(engine: Engine, table: Table, column: str) -> list[Any]:
    with engine.connect() as connection:
        statement = select(table.c[column]).order_by(table.c.pk)
        return list(connection.execute(statement).scalars())


def stored_instance(ds: Dataset, storage_key: str = "aa/bb/first.dcm") -> StoredInstance:
    """Describe ``ds`` as an instance stored under ``storage_key``."""
    header = describe_instance(ds, ExplicitVRLittleEndian)
    return StoredInstance(header, storage_key, 1000, "CT01")


def store(archive: Archive, ds: Dataset) -> str:
    """Store ``ds`` in Explicit VR Little Endian; return its storage key."""
    return archive.store(encode_dataset(ds), ExplicitVRLittleEndian).storage_key


def search(
    engine: Engine,
    level: str,
    model: str = "STUDY",
    options: MatchOptions | None = None,
    page_size: int = 500,
    **keys: Any,
) -> list[SearchResult]:
    query = parse_identifier(make_identifier(level, **keys), model, options)
    return list(IndexSearch(engine, page_size=page_size).search(query))


def values_of(results: list[SearchResult], keyword: str) -> list[list[Any]]:
    return [result.record.get(keyword) for result in results]


def first_values(results: list[SearchResult], keyword: str) -> list[Any]:
    """Return the first value of ``keyword`` in each result."""
    return [result.record[keyword][0] for result in results]


class TestNormalizeUrl:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            pytest.param(
                "postgresql://u:p@db/index", "postgresql+psycopg://u:p@db/index", id="postgresql"
            ),
            pytest.param(
                "postgres://u:p@db/index", "postgresql+psycopg://u:p@db/index", id="postgres"
            ),
            pytest.param(
                "postgresql+psycopg://u:p@db/index",
                "postgresql+psycopg://u:p@db/index",
                id="driver_given",
            ),
            pytest.param("sqlite:///index.sqlite", "sqlite:///index.sqlite", id="sqlite"),
        ],
    )
    def test_url(self, url: str, expected: str) -> None:
        assert normalize_url(url) == expected


class TestCreateIndexEngine:
    def test_unsupported_database(self) -> None:
        with pytest.raises(DatabaseError) as excinfo:
            create_index_engine("mysql://user:pw@127.0.0.1/index")
        assert str(excinfo.value) == (
            "Unsupported index database 'mysql': use sqlite:///PATH or "
            "postgresql://USER:PASSWORD@HOST/DATABASE"
        )

    def test_malformed_url(self) -> None:
        with pytest.raises(DatabaseError) as excinfo:
            create_index_engine("not a url")
        assert str(excinfo.value) == (
            "Invalid index URL 'not a url': Could not parse SQLAlchemy URL from given URL string"
        )

    def test_malformed_url_password_hidden(self) -> None:
        # A typo in the scheme must not print the password in the error.
        with pytest.raises(DatabaseError) as excinfo:
            create_index_engine("postgresql//dicomvault:s3cret@127.0.0.1/index")
        assert "s3cret" not in str(excinfo.value)

    def test_sqlite_folder_created(self, tmp_path: Path) -> None:
        path = tmp_path / "a" / "b" / "index.sqlite"
        engine = create_index_engine(f"sqlite:///{path}")
        engine.dispose()
        assert path.parent.is_dir()

    def test_sqlite_pragmas(self, tmp_path: Path) -> None:
        engine = create_index_engine(f"sqlite:///{tmp_path / 'index.sqlite'}")
        try:
            with engine.connect() as connection:
                journal_mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
                synchronous = connection.exec_driver_sql("PRAGMA synchronous").scalar()
                foreign_keys = connection.exec_driver_sql("PRAGMA foreign_keys").scalar()
        finally:
            engine.dispose()
        assert journal_mode == "wal"
        assert synchronous == 2  # FULL
        assert foreign_keys == 1

    def test_unopenable_sqlite(self, tmp_path: Path) -> None:
        # The database path is a folder, which SQLite cannot open.
        engine = create_index_engine(f"sqlite:///{tmp_path}")
        try:
            with pytest.raises(DatabaseError) as excinfo:
                migrate(engine)
        finally:
            engine.dispose()
        assert str(excinfo.value) == (
            f"Cannot open the index database sqlite:///{tmp_path}: unable to open database file"
        )


class TestMigrate:
    def test_creates_tables(self, index_engine: Engine) -> None:
        migrate(index_engine)
        assert set(inspect(index_engine).get_table_names()) >= INDEX_TABLES

    def test_records_revision(self, index_engine: Engine) -> None:
        migrate(index_engine)
        with index_engine.connect() as connection:
            version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        assert version == "0011"

    def test_newest_revision_is_alembic_head(self) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        assert newest_revision() == ScriptDirectory.from_config(config).get_current_head()

    def test_open_skips_migration_at_newest_revision(self, index_url: str) -> None:
        open_index_engine(index_url).dispose()
        engine = open_index_engine(index_url)
        try:
            assert schema_revision(engine) == newest_revision()
        finally:
            engine.dispose()

    def test_revision_of_new_database_is_none(self, index_engine: Engine) -> None:
        assert schema_revision(index_engine) is None

    def test_idempotent(self, index_engine: Engine) -> None:
        migrate(index_engine)
        migrate(index_engine)
        assert set(inspect(index_engine).get_table_names()) >= INDEX_TABLES

    def test_two_servers_migrate_new_database_at_once(self, index_url: str) -> None:
        engines = [create_index_engine(index_url) for _ in range(2)]
        errors: list[Exception] = []

        def run(engine: Engine) -> None:
            try:
                migrate(engine)
            except Exception as exc:  # collected for the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(engine,)) for engine in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        try:
            assert errors == []
            assert schema_revision(engines[0]) == newest_revision()
        finally:
            for engine in engines:
                engine.dispose()

    def test_keeps_rows(self, migrated_engine: Engine) -> None:
        IndexWriter(migrated_engine).add_instance(stored_instance(make_instance()))
        migrate(migrated_engine)
        assert count_rows(migrated_engine, instances) == 1


class TestAddInstance:
    def test_creates_one_row_per_level(self, migrated_engine: Engine) -> None:
        IndexWriter(migrated_engine).add_instance(stored_instance(make_instance()))
        for table in (patients, studies, series, instances):
            assert count_rows(migrated_engine, table) == 1, table.name

    def test_outcome(self, migrated_engine: Engine) -> None:
        outcome = IndexWriter(migrated_engine).add_instance(stored_instance(make_instance()))
        assert outcome == IndexOutcome(replaced=False, replaced_storage_key=None)

    def test_patient_columns(self, migrated_engine: Engine) -> None:
        ds = make_instance(PatientName="Doe^John^^", PatientID="PAT-1", IssuerOfPatientID="HOSP")
        IndexWriter(migrated_engine).add_instance(stored_instance(ds))
        assert column_values(migrated_engine, patients, "patient_key") == ["id:HOSP\\PAT-1"]
        assert column_values(migrated_engine, patients, "patient_name") == ["Doe^John^^"]
        assert column_values(migrated_engine, patients, "patient_name_match") == ["DOE^JOHN"]

    def test_time_match_column(self, migrated_engine: Engine) -> None:
        IndexWriter(migrated_engine).add_instance(stored_instance(make_instance(StudyTime="1015")))
        assert column_values(migrated_engine, studies, "study_time") == ["1015"]
        assert column_values(migrated_engine, studies, "study_time_match") == ["101500.000000"]

    def test_instance_columns(self, migrated_engine: Engine) -> None:
        ds = make_instance()
        IndexWriter(migrated_engine).add_instance(stored_instance(ds, "aa/bb/x.dcm"))
        assert column_values(migrated_engine, instances, "sop_instance_uid") == [ds.SOPInstanceUID]
        assert column_values(migrated_engine, instances, "storage_key") == ["aa/bb/x.dcm"]
        assert column_values(migrated_engine, instances, "size") == [1000]
        assert column_values(migrated_engine, instances, "source_ae_title") == ["CT01"]
        assert column_values(migrated_engine, instances, "transfer_syntax_uid") == [
            ExplicitVRLittleEndian
        ]

    def test_header_json_stored(self, migrated_engine: Engine) -> None:
        stored = stored_instance(make_instance(InstitutionName="General Hospital"))
        IndexWriter(migrated_engine).add_instance(stored)
        assert column_values(migrated_engine, instances, "header") == [stored.header.header_json]

    def test_second_instance_in_series(self, migrated_engine: Engine) -> None:
        writer = IndexWriter(migrated_engine)
        first = make_instance()
        second = make_instance(
            StudyInstanceUID=first.StudyInstanceUID, SeriesInstanceUID=first.SeriesInstanceUID
        )
        writer.add_instance(stored_instance(first, "aa/bb/first.dcm"))
        writer.add_instance(stored_instance(second, "aa/bb/second.dcm"))
        assert count_rows(migrated_engine, series) == 1
        assert count_rows(migrated_engine, instances) == 2

    def test_instance_exists(self, migrated_engine: Engine) -> None:
        writer = IndexWriter(migrated_engine)
        ds = make_instance()
        assert not writer.instance_exists(ds.SOPInstanceUID)
        writer.add_instance(stored_instance(ds))
        assert writer.instance_exists(ds.SOPInstanceUID)

    def test_patients_without_id_kept_apart(self, migrated_engine: Engine) -> None:
        writer = IndexWriter(migrated_engine)
        writer.add_instance(stored_instance(make_instance(PatientID=None, PatientName="A^B")))
        writer.add_instance(stored_instance(make_instance(PatientID=None, PatientName="C^D")))
        assert column_values(migrated_engine, patients, "patient_key") == ["name:A^B", "name:C^D"]


class TestReplaceInstance:
    def test_one_instance_row(self, migrated_engine: Engine) -> None:
        writer = IndexWriter(migrated_engine)
        ds = make_instance()
        writer.add_instance(stored_instance(ds, "aa/bb/first.dcm"))
        writer.add_instance(stored_instance(ds, "aa/bb/second.dcm"))
        assert count_rows(migrated_engine, instances) == 1
        assert column_values(migrated_engine, instances, "storage_key") == ["aa/bb/second.dcm"]

    def test_outcome_names_old_key(self, migrated_engine: Engine) -> None:
        writer = IndexWriter(migrated_engine)
        ds = make_instance()
        writer.add_instance(stored_instance(ds, "aa/bb/first.dcm"))
        outcome = writer.add_instance(stored_instance(ds, "aa/bb/second.dcm"))
        assert outcome == IndexOutcome(replaced=True, replaced_storage_key="aa/bb/first.dcm")

    def test_same_key_not_reported(self, migrated_engine: Engine) -> None:
        writer = IndexWriter(migrated_engine)
        ds = make_instance()
        writer.add_instance(stored_instance(ds, "aa/bb/first.dcm"))
        outcome = writer.add_instance(stored_instance(ds, "aa/bb/first.dcm"))
        assert outcome == IndexOutcome(replaced=True, replaced_storage_key=None)

    def test_newest_attributes(self, migrated_engine: Engine) -> None:
        writer = IndexWriter(migrated_engine)
        ds = make_instance(PatientName="Doe^John", StudyDescription="Brain")
        writer.add_instance(stored_instance(ds, "aa/bb/first.dcm"))
        ds.PatientName = "Doe^Johnny"
        ds.StudyDescription = "Brain and neck"
        writer.add_instance(stored_instance(ds, "aa/bb/second.dcm"))
        assert column_values(migrated_engine, patients, "patient_name") == ["Doe^Johnny"]
        assert column_values(migrated_engine, studies, "study_description") == ["Brain and neck"]

    def test_rejected_when_not_replacing(self, migrated_engine: Engine) -> None:
        writer = IndexWriter(migrated_engine)
        ds = make_instance(PatientName="Doe^John")
        writer.add_instance(stored_instance(ds, "aa/bb/first.dcm"))
        ds.PatientName = "Doe^Johnny"
        with pytest.raises(DuplicateInstanceError):
            writer.add_instance(stored_instance(ds, "aa/bb/second.dcm"), replace=False)
        assert column_values(migrated_engine, patients, "patient_name") == ["Doe^John"]
        assert column_values(migrated_engine, instances, "storage_key") == ["aa/bb/first.dcm"]

    def test_own_committed_write_not_duplicate(self, migrated_engine: Engine) -> None:
        # A retry after a COMMIT whose reply was lost finds its own row.
        writer = IndexWriter(migrated_engine)
        ds = make_instance()
        stored = stored_instance(ds, "aa/bb/first.dcm")
        writer.add_instance(stored, replace=False)

        outcome = writer.add_instance(stored, replace=False)

        assert outcome == IndexOutcome(replaced=False, replaced_storage_key=None)
        assert column_values(migrated_engine, instances, "storage_key") == ["aa/bb/first.dcm"]

    def test_own_committed_batch_not_duplicate(self, migrated_engine: Engine) -> None:
        writer = IndexWriter(migrated_engine)
        batch = [stored_instance(make_instance(), f"aa/bb/{n}.dcm") for n in range(2)]
        writer.add_instances(batch, replace=False)

        outcomes = writer.add_instances(batch, replace=False)

        assert outcomes == [IndexOutcome(replaced=False, replaced_storage_key=None)] * 2
        assert len(column_values(migrated_engine, instances, "storage_key")) == 2

    def test_in_place_file_again_is_duplicate(self, migrated_engine: Engine) -> None:
        # An in-place key names the file, so an equal key is not a lost commit.
        writer = IndexWriter(migrated_engine)
        stored = stored_instance(make_instance(), in_place_key("/srv/import/a.dcm"))
        writer.add_instance(stored, replace=False)

        with pytest.raises(DuplicateInstanceError):
            writer.add_instance(stored, replace=False)
        assert writer.add_instances([stored], replace=False) == [None]

    def test_emptied_parents_removed(self, migrated_engine: Engine) -> None:
        writer = IndexWriter(migrated_engine)
        ds = make_instance(PatientID="PAT-1")
        writer.add_instance(stored_instance(ds, "aa/bb/first.dcm"))
        moved = make_instance(SOPInstanceUID=ds.SOPInstanceUID, PatientID="PAT-2")
        writer.add_instance(stored_instance(moved, "aa/bb/second.dcm"))
        assert column_values(migrated_engine, patients, "patient_id") == ["PAT-2"]
        assert column_values(migrated_engine, studies, "study_instance_uid") == [
            moved.StudyInstanceUID
        ]
        assert column_values(migrated_engine, series, "series_instance_uid") == [
            moved.SeriesInstanceUID
        ]

    def test_parents_with_children_kept(self, migrated_engine: Engine) -> None:
        writer = IndexWriter(migrated_engine)
        first = make_instance()
        second = make_instance(
            StudyInstanceUID=first.StudyInstanceUID, SeriesInstanceUID=first.SeriesInstanceUID
        )
        writer.add_instance(stored_instance(first, "aa/bb/first.dcm"))
        writer.add_instance(stored_instance(second, "aa/bb/second.dcm"))
        moved = make_instance(SOPInstanceUID=second.SOPInstanceUID, PatientID="PAT-2")
        writer.add_instance(stored_instance(moved, "aa/bb/third.dcm"))
        assert column_values(migrated_engine, patients, "patient_id") == ["PAT-1", "PAT-2"]
        assert count_rows(migrated_engine, studies) == 2
        assert count_rows(migrated_engine, series) == 2

    def test_moved_within_study(self, migrated_engine: Engine) -> None:
        writer = IndexWriter(migrated_engine)
        ds = make_instance()
        writer.add_instance(stored_instance(ds, "aa/bb/first.dcm"))
        moved = make_instance(
            SOPInstanceUID=ds.SOPInstanceUID, StudyInstanceUID=ds.StudyInstanceUID
        )
        writer.add_instance(stored_instance(moved, "aa/bb/second.dcm"))
        assert column_values(migrated_engine, series, "series_instance_uid") == [
            moved.SeriesInstanceUID
        ]
        assert count_rows(migrated_engine, studies) == 1

    def test_corrected_patient_id(self, migrated_engine: Engine) -> None:
        # The same study sent again under another Patient ID moves to that patient.
        writer = IndexWriter(migrated_engine)
        ds = make_instance(PatientID="WRONG-ID")
        writer.add_instance(stored_instance(ds, "aa/bb/first.dcm"))
        ds.PatientID = "PAT-1"
        writer.add_instance(stored_instance(ds, "aa/bb/second.dcm"))
        assert column_values(migrated_engine, patients, "patient_id") == ["PAT-1"]


@dataclasses.dataclass
class Corpus:
    """An archive of two patients, three studies, four series and five instances.

    =========  =======  ======================  =======  ==============
    patient    study    date, time              series   instances
    =========  =======  ======================  =======  ==============
    PAT-1      study1   20240115 101500         mr1      image1, image2
    PAT-1      study1                           ct1      image3
    PAT-1      study2   20230301 083000         us1      image4
    PAT-2      study3   20240220 143000         mr2      image5
    =========  =======  ======================  =======  ==============

    image3 alone has Institution Name "General Hospital"; the others have
    "Other Hospital". ``uids`` maps the names in the table to UIDs.
    """

    archive: Archive
    uids: dict[str, str]

    @property
    def engine(self) -> Engine:
        return self.archive.engine

    def __getitem__(self, name: str) -> str:
        return self.uids[name]

    def names(self, values: list[str]) -> list[str]:
        """Return the names of UIDs in the table, for readable assertions."""
        by_uid = {uid: name for name, uid in self.uids.items()}
        return [by_uid[value] for value in values]


def procedure(code: str) -> list[Dataset]:
    item = Dataset()
    item.CodeValue = code
    item.CodingSchemeDesignator = "LOCAL"
    return [item]


@pytest.fixture(scope="module")
def corpus(make_module_archive: Callable[[], Archive]) -> Corpus:
    archive = make_module_archive()
    names = ["study1", "study2", "study3", "mr1", "ct1", "us1", "mr2"]
    names += [f"image{number}" for number in range(1, 6)]
    uids = {name: new_uid() for name in names}
    patient1 = {"PatientID": "PAT-1", "PatientName": "Doe^John"}
    patient2 = {"PatientID": "PAT-2", "PatientName": "Roe^Jane"}
    study1 = {
        "StudyInstanceUID": uids["study1"],
        "StudyDate": "20240115",
        "StudyTime": "101500",
        "AccessionNumber": "A-1",
        "ProcedureCodeSequence": procedure("MR-BRAIN"),
    }
    study2 = {"StudyInstanceUID": uids["study2"], "StudyDate": "20230301", "StudyTime": "083000"}
    study3 = {
        "StudyInstanceUID": uids["study3"],
        "StudyDate": "20240220",
        "StudyTime": "143000",
        "ProcedureCodeSequence": procedure("MR-KNEE"),
    }
    layout = [
        ("image1", patient1, study1, "mr1", "MR", MRImageStorage),
        ("image2", patient1, study1, "mr1", "MR", MRImageStorage),
        ("image3", patient1, study1, "ct1", "CT", CTImageStorage),
        ("image4", patient1, study2, "us1", "US", UltrasoundImageStorage),
        ("image5", patient2, study3, "mr2", "MR", MRImageStorage),
    ]
    for image, patient, study, series_name, modality, sop_class in layout:
        institution = "General Hospital" if image == "image3" else "Other Hospital"
        ds = make_instance(
            SOPClassUID=sop_class,
            SOPInstanceUID=uids[image],
            SeriesInstanceUID=uids[series_name],
            Modality=modality,
            InstitutionName=institution,
            **patient,
            **study,
        )
        store(archive, ds)
    return Corpus(archive, uids)


class TestSearchLevels:
    def test_patient(self, corpus: Corpus) -> None:
        results = search(corpus.engine, "PATIENT", "PATIENT", PatientID="PAT-2", PatientName="")
        assert first_values(results, "PatientName") == ["Roe^Jane"]

    def test_study_date_range(self, corpus: Corpus) -> None:
        results = search(corpus.engine, "STUDY", StudyDate="20240101-20241231")
        assert corpus.names(first_values(results, "StudyInstanceUID")) == ["study1", "study3"]

    def test_study_single_date(self, corpus: Corpus) -> None:
        results = search(corpus.engine, "STUDY", StudyDate="20230301")
        assert corpus.names(first_values(results, "StudyInstanceUID")) == ["study2"]

    def test_study_open_date_range(self, corpus: Corpus) -> None:
        results = search(corpus.engine, "STUDY", StudyDate="-20231231")
        assert corpus.names(first_values(results, "StudyInstanceUID")) == ["study2"]

    def test_study_time_range(self, corpus: Corpus) -> None:
        results = search(corpus.engine, "STUDY", StudyTime="1000-1100")
        assert corpus.names(first_values(results, "StudyInstanceUID")) == ["study1"]

    def test_study_uid_list(self, corpus: Corpus) -> None:
        uid_list = f"{corpus['study1']}\\{corpus['study3']}"
        results = search(corpus.engine, "STUDY", StudyInstanceUID=uid_list)
        assert corpus.names(first_values(results, "StudyInstanceUID")) == ["study1", "study3"]

    def test_study_carries_patient(self, corpus: Corpus) -> None:
        results = search(corpus.engine, "STUDY", AccessionNumber="A-1")
        assert first_values(results, "PatientID") == ["PAT-1"]

    def test_series(self, corpus: Corpus) -> None:
        results = search(corpus.engine, "SERIES", StudyInstanceUID=corpus["study1"], Modality="MR")
        assert corpus.names(first_values(results, "SeriesInstanceUID")) == ["mr1"]

    def test_series_across_studies(self, corpus: Corpus) -> None:
        results = search(corpus.engine, "SERIES", Modality="MR")
        assert corpus.names(first_values(results, "SeriesInstanceUID")) == ["mr1", "mr2"]

    def test_image(self, corpus: Corpus) -> None:
        results = search(corpus.engine, "IMAGE", SeriesInstanceUID=corpus["mr1"])
        assert corpus.names(first_values(results, "SOPInstanceUID")) == ["image1", "image2"]

    def test_image_storage_key(self, corpus: Corpus) -> None:
        results = search(corpus.engine, "IMAGE", SOPInstanceUID=corpus["image4"])
        assert len(results) == 1
        assert corpus.archive.storage.exists(results[0].storage_key)

    def test_image_parent_keys(self, corpus: Corpus) -> None:
        results = search(corpus.engine, "IMAGE", SOPInstanceUID=corpus["image4"])
        assert set(results[0].pks) == set(Level)

    def test_no_match(self, corpus: Corpus) -> None:
        assert search(corpus.engine, "STUDY", AccessionNumber="NONE") == []

    def test_wildcard(self, corpus: Corpus) -> None:
        results = search(corpus.engine, "SERIES", Modality="?T")
        assert corpus.names(first_values(results, "SeriesInstanceUID")) == ["ct1"]

    def test_through_archive(self, corpus: Corpus) -> None:
        query = parse_identifier(make_identifier("STUDY", PatientID="PAT-2"))
        results = list(corpus.archive.search(query))
        assert corpus.names(first_values(results, "StudyInstanceUID")) == ["study3"]


class TestComputedAttributes:
    @pytest.mark.parametrize(
        ("level", "model", "keyword", "expected"),
        [
            pytest.param(
                "PATIENT",
                "PATIENT",
                "NumberOfPatientRelatedStudies",
                [["2"], ["1"]],
                id="patient_studies",
            ),
            pytest.param(
                "PATIENT",
                "PATIENT",
                "NumberOfPatientRelatedSeries",
                [["3"], ["1"]],
                id="patient_series",
            ),
            pytest.param(
                "PATIENT",
                "PATIENT",
                "NumberOfPatientRelatedInstances",
                [["4"], ["1"]],
                id="patient_instances",
            ),
            pytest.param(
                "STUDY",
                "STUDY",
                "NumberOfStudyRelatedSeries",
                [["2"], ["1"], ["1"]],
                id="study_series",
            ),
            pytest.param(
                "STUDY",
                "STUDY",
                "NumberOfStudyRelatedInstances",
                [["3"], ["1"], ["1"]],
                id="study_instances",
            ),
            pytest.param(
                "STUDY",
                "STUDY",
                "ModalitiesInStudy",
                [["CT", "MR"], ["US"], ["MR"]],
                id="modalities",
            ),
            pytest.param(
                "STUDY",
                "STUDY",
                "SOPClassesInStudy",
                [
                    sorted([CTImageStorage, MRImageStorage]),
                    [UltrasoundImageStorage],
                    [MRImageStorage],
                ],
                id="sop_classes",
            ),
            pytest.param(
                "SERIES",
                "STUDY",
                "NumberOfSeriesRelatedInstances",
                [["2"], ["1"], ["1"], ["1"]],
                id="series_instances",
            ),
        ],
    )
    def test_returned(
        self,
        corpus: Corpus,
        level: str,
        model: str,
        keyword: str,
        expected: list[list[str]],
    ) -> None:
        results = search(corpus.engine, level, model, **{keyword: ""})
        assert values_of(results, keyword) == expected

    def test_returned_together(self, corpus: Corpus) -> None:
        # Asked together, the study summaries come from one statement.
        keywords = ["NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"]
        keywords.append("ModalitiesInStudy")
        together = search(corpus.engine, "STUDY", **dict.fromkeys(keywords, ""))
        for keyword in keywords:
            alone = search(corpus.engine, "STUDY", **{keyword: ""})
            assert values_of(together, keyword) == values_of(alone, keyword)

    def test_instances_in_study_matched(self, corpus: Corpus) -> None:
        results = search(corpus.engine, "STUDY", NumberOfStudyRelatedInstances="3")
        assert corpus.names(first_values(results, "StudyInstanceUID")) == ["study1"]

    def test_studies_of_patient_matched(self, corpus: Corpus) -> None:
        results = search(corpus.engine, "PATIENT", "PATIENT", NumberOfPatientRelatedStudies="2")
        assert first_values(results, "PatientID") == ["PAT-1"]

    @pytest.mark.parametrize(
        ("modalities", "expected"),
        [
            pytest.param("CT", ["study1"], id="single"),
            pytest.param("US\\CT", ["study1", "study2"], id="list"),
            pytest.param("M?", ["study1", "study3"], id="wildcard"),
            pytest.param("XA", [], id="absent"),
        ],
    )
    def test_modalities_matched(self, corpus: Corpus, modalities: str, expected: list[str]) -> None:
        results = search(corpus.engine, "STUDY", ModalitiesInStudy=modalities)
        assert corpus.names(first_values(results, "StudyInstanceUID")) == expected

    def test_modalities_at_series_level(self, corpus: Corpus) -> None:
        results = search(corpus.engine, "SERIES", ModalitiesInStudy="CT", Modality="MR")
        assert corpus.names(first_values(results, "SeriesInstanceUID")) == ["mr1"]


class TestHeaderAttributes:
    def test_matched_at_image_level(self, corpus: Corpus) -> None:
        results = search(corpus.engine, "IMAGE", InstitutionName="General*")
        assert corpus.names(first_values(results, "SOPInstanceUID")) == ["image3"]

    def test_returned_as_json(self, corpus: Corpus) -> None:
        results = search(
            corpus.engine, "IMAGE", SOPInstanceUID=corpus["image3"], InstitutionName=""
        )
        assert results[0].elements[0x00080080] == {"vr": "LO", "Value": ["General Hospital"]}

    def test_returned_in_record(self, corpus: Corpus) -> None:
        results = search(
            corpus.engine, "IMAGE", SOPInstanceUID=corpus["image1"], InstitutionName=""
        )
        assert results[0].record["InstitutionName"] == ["Other Hospital"]

    def test_study_uses_newest_instance(self, corpus: Corpus) -> None:
        # image3 is the newest instance of study1.
        results = search(corpus.engine, "STUDY", InstitutionName="General Hospital")
        assert corpus.names(first_values(results, "StudyInstanceUID")) == ["study1"]

    def test_sequence_matched(self, corpus: Corpus) -> None:
        results = search(corpus.engine, "STUDY", ProcedureCodeSequence=procedure("MR-KNEE"))
        assert corpus.names(first_values(results, "StudyInstanceUID")) == ["study3"]

    def test_sequence_returned(self, corpus: Corpus) -> None:
        key = [Dataset()]
        results = search(
            corpus.engine, "STUDY", StudyInstanceUID=corpus["study1"], ProcedureCodeSequence=key
        )
        element = results[0].elements[0x00081032]
        assert element["Value"][0]["00080100"] == {"vr": "SH", "Value": ["MR-BRAIN"]}

    def test_absent_attribute(self, corpus: Corpus) -> None:
        results = search(corpus.engine, "STUDY", StudyInstanceUID=corpus["study2"], StationName="")
        assert "StationName" not in results[0].record

    def test_retrieve_url_reads_no_header(
        self, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The responder fills RetrieveURL itself; reading stored headers for it
        # cost QIDO-RS about a third of a single-match study search.
        def fail(*args: object) -> None:
            raise AssertionError("stored headers were read")

        monkeypatch.setattr(index_search, "_representative_headers", fail)
        results = search(corpus.engine, "STUDY", StudyInstanceUID=corpus["study2"], RetrieveURL="")
        assert corpus.names(first_values(results, "StudyInstanceUID")) == ["study2"]


class TestPaging:
    @pytest.mark.parametrize("page_size", [1, 2, 5, 500], ids=lambda size: f"page_{size}")
    def test_all_instances(self, corpus: Corpus, page_size: int) -> None:
        results = search(corpus.engine, "IMAGE", page_size=page_size)
        assert corpus.names(first_values(results, "SOPInstanceUID")) == [
            "image1",
            "image2",
            "image3",
            "image4",
            "image5",
        ]

    def test_filter_across_pages(self, corpus: Corpus) -> None:
        results = search(corpus.engine, "IMAGE", page_size=2, InstitutionName="Other Hospital")
        assert corpus.names(first_values(results, "SOPInstanceUID")) == [
            "image1",
            "image2",
            "image4",
            "image5",
        ]

    def test_studies(self, corpus: Corpus) -> None:
        results = search(corpus.engine, "STUDY", page_size=2, NumberOfStudyRelatedInstances="")
        assert values_of(results, "NumberOfStudyRelatedInstances") == [["3"], ["1"], ["1"]]

    def test_stop_early(self, corpus: Corpus) -> None:
        query = parse_identifier(make_identifier("IMAGE"))
        results = IndexSearch(corpus.engine, page_size=2).search(query)
        first = next(results)
        results.close()
        assert corpus.names(first.record["SOPInstanceUID"]) == ["image1"]


@pytest.fixture(scope="module")
def named_patients(make_module_archive: Callable[[], Archive]) -> Engine:
    """Store patients whose names test case and character set handling; return the index."""
    archive = make_module_archive()
    for patient_id, name in [
        ("LATIN-1", "Doe^John"),
        ("LATIN-2", "DOE^JANE"),
        ("LATIN-3", "Smith^Anna"),
    ]:
        store(archive, make_instance(PatientID=patient_id, PatientName=name))
    utf8 = make_instance(
        PatientID="UTF8-1",
        PatientName="Yamada^Hanako=山田^花子=やまだ^はなこ",
        SpecificCharacterSet="ISO_IR 192",
    )
    store(archive, utf8)
    # Explicit VR Little Endian files: Japanese in ISO 2022 IR 87 with
    # ISO 2022 IR 13 katakana (chrH32), Chinese in UTF-8 (chrX1), German
    # in ISO_IR 100.
    for name in ("chrH31.dcm", "chrH32.dcm", "chrX1.dcm", "chrGerm.dcm"):
        archive.store(file_dataset(PYDICOM_CHARSET_FILES / name), ExplicitVRLittleEndian)
    return archive.engine


class TestPersonNames:
    @pytest.mark.parametrize(
        ("name", "options", "expected"),
        [
            pytest.param("doe^john", None, ["LATIN-1"], id="insensitive"),
            pytest.param("doe^john", CASE_SENSITIVE, [], id="sensitive_other_case"),
            pytest.param("Doe^John", CASE_SENSITIVE, ["LATIN-1"], id="sensitive_same_case"),
            pytest.param("DOE*", None, ["LATIN-1", "LATIN-2"], id="insensitive_wildcard"),
            pytest.param("DOE*", CASE_SENSITIVE, ["LATIN-2"], id="sensitive_wildcard"),
            pytest.param("d?e^j*", None, ["LATIN-1", "LATIN-2"], id="question_mark"),
            pytest.param("Doe^John^^", None, ["LATIN-1"], id="empty_components"),
            pytest.param("äneas^rüdiger", None, ["SCSGERM"], id="insensitive_umlaut"),
            pytest.param("äneas^rüdiger", CASE_SENSITIVE, [], id="sensitive_umlaut"),
            pytest.param("Yamada^Tarou", None, ["H31EXAMPLE"], id="alphabetic_group"),
            pytest.param("yamada^tarou", None, ["H31EXAMPLE"], id="alphabetic_other_case"),
            pytest.param("山田^太郎", None, ["H31EXAMPLE", "H32EXAMPLE"], id="ideographic_group"),
            pytest.param("やまだ^たろう", None, ["H31EXAMPLE", "H32EXAMPLE"], id="phonetic_group"),
            pytest.param("ﾔﾏﾀﾞ^ﾀﾛｳ", None, ["H32EXAMPLE"], id="half_width_katakana"),
            pytest.param(
                "山田*", None, ["UTF8-1", "H31EXAMPLE", "H32EXAMPLE"], id="ideographic_wildcard"
            ),
            pytest.param("*花子", None, ["UTF8-1"], id="leading_wildcard"),
            pytest.param(
                "Yamada^Tarou=山田^太郎=やまだ^たろう", None, ["H31EXAMPLE"], id="all_groups"
            ),
            pytest.param("Wang^XiaoDong", None, ["X1EXAMPLE"], id="utf8_alphabetic"),
            pytest.param("王^小東", None, ["X1EXAMPLE"], id="utf8_ideographic"),
        ],
    )
    def test_patient_name(
        self,
        named_patients: Engine,
        name: str,
        options: MatchOptions | None,
        expected: list[str],
    ) -> None:
        results = search(named_patients, "STUDY", options=options, PatientName=name, PatientID="")
        assert first_values(results, "PatientID") == expected

    def test_japanese_name_returned(self, named_patients: Engine) -> None:
        results = search(named_patients, "STUDY", PatientID="H31EXAMPLE", PatientName="")
        assert first_values(results, "PatientName") == ["Yamada^Tarou=山田^太郎=やまだ^たろう"]

    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            pytest.param("100%", ["PCT"], id="percent"),
            pytest.param("A_B", ["UNDERSCORE"], id="underscore"),
        ],
    )
    def test_like_characters_literal(
        self, archive: Archive, name: str, expected: list[str]
    ) -> None:
        store(archive, make_instance(PatientID="PCT", PatientName="100%"))
        store(archive, make_instance(PatientID="UNDERSCORE", PatientName="A_B"))
        store(archive, make_instance(PatientID="OTHER", PatientName="AXB"))
        results = search(archive.engine, "STUDY", PatientName=name, PatientID="")
        assert first_values(results, "PatientID") == expected


class TestStoredValueForms:
    def test_acr_nema_date(self, archive: Archive) -> None:
        # dicomvault.dicom.matching reads the ACR-NEMA form YYYY.MM.DD as a
        # date, so the SQL prefilter must not drop such a study.
        ds = make_instance(StudyDate=None)
        add_raw_element(ds, "StudyDate", "2020.01.15")
        store(archive, ds)
        results = search(archive.engine, "STUDY", StudyDate="20200101-20200131")
        assert first_values(results, "StudyInstanceUID") == [ds.StudyInstanceUID]

    def test_reduced_precision_time(self, archive: Archive) -> None:
        ds = make_instance(StudyTime="10")
        store(archive, ds)
        results = search(archive.engine, "STUDY", StudyTime="1030-1045")
        assert first_values(results, "StudyInstanceUID") == [ds.StudyInstanceUID]


def search_plan(engine: Engine, level: str, **keys: Any) -> str:
    """Return PostgreSQL's plan of the first statement of a search, with sequential scans off.

    With ``enable_seqscan`` off the planner uses an index wherever one can
    serve the condition, so the plan shows whether one can, whatever the
    size of the test tables.
    """
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        search(engine, level, **keys)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = statements[0]
    with engine.begin() as connection:
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        rows = connection.exec_driver_sql("EXPLAIN " + statement, parameters).all()
    return "\n".join(row[0] for row in rows)


@pytest.fixture(scope="module")
def postgres_names(postgres_databases: PostgresDatabases) -> Iterator[Engine]:
    """A PostgreSQL index of three patients, one with three component groups."""
    engine = open_index_engine(postgres_databases.create())
    writer = IndexWriter(engine)
    names = ("Doe^John", "Yamada^Tarou=山田^太郎=やまだ^たろう", "Smith^Anna")
    for number, name in enumerate(names):
        ds = make_instance(
            PatientID=f"NAME-{number}", PatientName=name, SpecificCharacterSet="ISO_IR 192"
        )
        writer.add_instance(stored_instance(ds, f"aa/bb/{number}.dcm"))
    yield engine
    engine.dispose()


@pytest.mark.postgres
class TestPatientNameIndexes:
    """A Patient Name wildcard with a literal start reads indexes, not every patient."""

    def test_wildcard_uses_indexes(self, postgres_names: Engine) -> None:
        plan = search_plan(postgres_names, "STUDY", PatientName="DOE*")

        assert "Seq Scan on patients" not in plan
        assert "ix_patients_patient_name_match" in plan
        assert "ix_patients_patient_name_groups" in plan

    def test_wildcard_finds_later_group(self, postgres_names: Engine) -> None:
        results = search(postgres_names, "STUDY", PatientName="山田*", PatientID="")

        assert first_values(results, "PatientName") == ["Yamada^Tarou=山田^太郎=やまだ^たろう"]


class TestSchemaMatchesMigrations:
    def test_no_difference(self, index_engine: Engine) -> None:
        # schema.py describes the newest revision; a change to it needs a migration.
        migrate(index_engine)
        with index_engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), METADATA)
        assert differences == []


class TestQueryLanguageSearch:
    """Query language expressions searched in the index, with and without SQL prefilters."""

    @pytest.fixture
    def engine(self, migrated_engine: Engine) -> Engine:
        writer = IndexWriter(migrated_engine)
        for number, (name, modality, date, body_part) in enumerate(
            [
                ("Smith^John", "CT", "20200615", "CHEST"),
                ("Smith^Anna", "MR", "20210301", "HEAD"),
                ("Jones^Ann", "CT", "20191231", "HEAD"),
            ]
        ):
            ds = make_instance(
                PatientID=f"QL-{number}",
                PatientName=name,
                Modality=modality,
                StudyDate=date,
                BodyPartExamined=body_part,
            )
            writer.add_instance(stored_instance(ds, f"ql/{number}.dcm"))
        return migrated_engine

    def patient_ids(self, engine: Engine, text: str, level: Level = Level.SERIES) -> list[str]:
        query = to_query(parse(text), level)
        results = IndexSearch(engine).search(query)
        return sorted(str(result.record["PatientID"][0]) for result in results)

    def test_or_of_columns(self, engine: Engine) -> None:
        assert self.patient_ids(engine, "PatientName:SMITH* AND (Modality:MR OR Modality:XA)") == [
            "QL-1"
        ]

    def test_not(self, engine: Engine) -> None:
        assert self.patient_ids(engine, "Modality:CT AND NOT PatientName:Jones*") == ["QL-0"]

    def test_date_range(self, engine: Engine) -> None:
        assert self.patient_ids(engine, "StudyDate:[20200101 TO *] -Modality:MR") == ["QL-0"]

    def test_attribute_without_column(self, engine: Engine) -> None:
        # BodyPartExamined is matched in the stored header, not by SQL.
        assert self.patient_ids(engine, "BodyPartExamined:HEAD OR PatientID:QL-0") == [
            "QL-0",
            "QL-1",
            "QL-2",
        ]
        assert self.patient_ids(engine, "BodyPartExamined:HEAD AND Modality:CT") == ["QL-2"]
