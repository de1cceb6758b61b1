"""Unit tests for indexing tasks over a folder, on SQLite and PostgreSQL, with real workers."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import Engine, func, select

from dicomvault.archive import Archive
from dicomvault.config import load_settings
from dicomvault.dicom.attributes import Level
from dicomvault.events import EventBus, FilesIndexed
from dicomvault.index.schema import indexed_files, instances, patients, series, studies
from dicomvault.index.tasks import TaskCounts, TaskFile, TaskRecord
from dicomvault.index.writer import IndexWriter, StoredInstance
from dicomvault.ingest.indexer import IngestContext
from dicomvault.ingest.jobs import Mode
from dicomvault.ingest.pool import ReaderPool
from dicomvault.ingest.reader import DICOMDIR_REASON
from dicomvault.ingest.runner import run_index_task
from dicomvault.ingest.worker import DUPLICATE_REASON
from dicomvault.storage.filesystem import FilesystemStorage
from dicomvault.storage.in_place import in_place_key
from tests.support.corpus import PYDICOM_TEST_FILES, write_instance
from tests.support.datasets import make_instance, new_uid
from tests.unit.test_index import stored_instance

STUDY = new_uid()


@pytest.fixture(scope="module")
def pool() -> Iterator[ReaderPool]:
    reader_pool = ReaderPool(2)
    yield reader_pool
    reader_pool.close()


def make_context(
    data_dir: Path, engine: Engine, pool: ReaderPool, **overrides: Any
) -> IngestContext:
    options = {name.replace("__", "."): value for name, value in overrides.items()}
    settings = load_settings(
        environ={},
        overrides={
            "storage.data_dir": str(data_dir),
            "index.url": engine.url.render_as_string(hide_password=False),
            "ingest.settle_seconds": 0.2,
            **options,
        },
    )
    return IngestContext(settings, engine, FilesystemStorage(data_dir / "storage"), pool)


@pytest.fixture
def context(tmp_path: Path, migrated_engine: Engine, pool: ReaderPool) -> IngestContext:
    return make_context(tmp_path / "data", migrated_engine, pool)


def write_series(folder: Path, count: int, **attributes: Any) -> list[Dataset]:
    datasets = []
    series_uid = new_uid()
    for number in range(1, count + 1):
        ds = make_instance(
            StudyInstanceUID=STUDY,
            SeriesInstanceUID=series_uid,
            InstanceNumber=number,
            **attributes,
        )
        write_instance(folder / f"series-{series_uid[-6:]}" / f"{number:03d}.dcm", ds)
        datasets.append(ds)
    # Older than settle_seconds, so that the files are read at once.
    past = time.time() - 60
    for path in folder.rglob("*.dcm"):
        os.utime(path, (past, past))
    return datasets


def run(
    context: IngestContext,
    folder: Path,
    mode: Mode = Mode.IN_PLACE,
    prune: bool = False,
    cancel: threading.Event | None = None,
    on_progress: Any = None,
) -> TaskRecord:
    task_id = context.tasks.create("index", str(folder), str(mode), prune)
    return run_index_task(
        context, task_id, folder, mode, prune, cancel or threading.Event(), on_progress
    )


def indexed_uids(engine: Engine) -> dict[str, str]:
    with engine.connect() as connection:
        rows = connection.execute(select(instances.c.sop_instance_uid, instances.c.storage_key))
        return dict(rows.all())


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def counts_of(record: TaskRecord) -> dict[str, int]:
    counts = record.counts
    return {
        "found": counts.found,
        "indexed": counts.indexed,
        "skipped": counts.skipped,
        "failed": counts.failed,
        "ignored": counts.ignored,
    }


class TestInPlace:
    def test_mixed_folder(self, context: IngestContext, tmp_path: Path) -> None:
        folder = tmp_path / "in"
        datasets = write_series(folder, 3)
        (folder / "notes.txt").write_text("not DICOM")
        shutil.copy(PYDICOM_TEST_FILES / "MR_truncated.dcm", folder / "truncated.dcm")
        shutil.copy(PYDICOM_TEST_FILES / "dicomdirtests" / "DICOMDIR", folder / "DICOMDIR")

        record = run(context, folder)

        assert record.status == "completed"
        assert counts_of(record) == {
            "found": 6,
            "indexed": 3,
            "skipped": 0,
            "failed": 2,
            "ignored": 1,
        }
        uids = indexed_uids(context.engine)
        assert set(uids) == {ds.SOPInstanceUID for ds in datasets}
        assert all(key.startswith(f"inplace:{folder}/") for key in uids.values())
        report = {Path(f.path).name: (f.outcome, f.reason) for f in context.tasks.files(record.id)}
        assert report == {
            "DICOMDIR": ("ignored", DICOMDIR_REASON),
            "notes.txt": (
                "failed",
                "Not a DICOM file: no 'DICM' prefix after a 128-byte preamble (PS3.10 7.1)",
            ),
            "truncated.dcm": (
                "failed",
                "The dataset is truncated: Pixel Data declares 8192 bytes but 8130 follow",
            ),
        }

    def test_chunk_events_published(self, context: IngestContext, tmp_path: Path) -> None:
        folder = tmp_path / "in"
        write_series(folder, 3)
        (folder / "notes.txt").write_text("not DICOM")
        shutil.copy(PYDICOM_TEST_FILES / "dicomdirtests" / "DICOMDIR", folder / "DICOMDIR")
        context.events = EventBus()
        published: list[FilesIndexed] = []
        context.events.subscribe(FilesIndexed, published.append)

        record = run(context, folder)

        assert published
        assert {event.task_id for event in published} == {record.id}
        assert sum(event.indexed for event in published) == 3
        assert sum(event.failed for event in published) == 1
        assert sum(event.ignored for event in published) == 1

    def test_rerun_skips_unchanged(self, context: IngestContext, tmp_path: Path) -> None:
        folder = tmp_path / "in"
        write_series(folder, 3)
        (folder / "notes.txt").write_text("not DICOM")
        run(context, folder)

        again = run(context, folder)

        assert counts_of(again) == {
            "found": 4,
            "indexed": 0,
            "skipped": 4,
            "failed": 0,
            "ignored": 0,
        }
        assert context.tasks.files(again.id) == []

    def test_touched_file_read_again(self, context: IngestContext, tmp_path: Path) -> None:
        folder = tmp_path / "in"
        write_series(folder, 3)
        run(context, folder)
        touched = sorted(folder.rglob("*.dcm"))[1]
        past = time.time() - 30
        os.utime(touched, (past, past))

        again = run(context, folder)

        assert counts_of(again) == {
            "found": 3,
            "indexed": 1,
            "skipped": 2,
            "failed": 0,
            "ignored": 0,
        }
        assert count(context.engine, instances) == 3

    def test_prune_removes_deleted_file(self, context: IngestContext, tmp_path: Path) -> None:
        folder = tmp_path / "in"
        datasets = write_series(folder, 2)
        run(context, folder)
        gone = sorted(folder.rglob("*.dcm"))[0]
        gone.unlink()

        without_prune = run(context, folder)
        kept = set(indexed_uids(context.engine))
        pruned = run(context, folder, prune=True)

        assert without_prune.counts.pruned == 0
        assert kept == {ds.SOPInstanceUID for ds in datasets}
        assert pruned.counts.pruned == 1
        assert set(indexed_uids(context.engine)) == {datasets[1].SOPInstanceUID}
        assert count(context.engine, indexed_files) == 1
        assert context.tasks.files(pruned.id) == [
            TaskFile(
                str(gone),
                "pruned",
                f"The file is gone; instance {datasets[0].SOPInstanceUID} "
                "was removed from the index",
            )
        ]

    def test_prune_of_last_file_removes_parents(
        self, context: IngestContext, tmp_path: Path
    ) -> None:
        folder = tmp_path / "in"
        write_series(folder, 1)
        run(context, folder)
        next(folder.rglob("*.dcm")).unlink()

        run(context, folder, prune=True)

        assert [count(context.engine, t) for t in (patients, studies, series, instances)] == [
            0,
            0,
            0,
            0,
        ]

    def test_file_still_written_is_waited_for(self, context: IngestContext, tmp_path: Path) -> None:
        folder = tmp_path / "in"
        write_series(folder, 1)
        fresh = write_instance(folder / "fresh.dcm", make_instance())

        record = run(context, folder)

        assert record.counts.indexed == 2
        assert record.counts.pending == 0
        assert in_place_key(fresh) in indexed_uids(context.engine).values()

    def test_file_always_changing_reported_pending(
        self, context: IngestContext, tmp_path: Path
    ) -> None:
        folder = tmp_path / "in"
        path = write_instance(folder / "growing.dcm", make_instance())
        # A modification time in the future never becomes settle_seconds old.
        future = time.time() + 3600
        os.utime(path, (future, future))

        record = run(context, folder)

        assert record.counts.pending == 1
        assert record.counts.indexed == 0
        [entry] = context.tasks.files(record.id)
        assert entry.outcome == "pending"
        assert entry.reason.startswith("Still being written")

    def test_cancel_leaves_index_consistent(self, context: IngestContext, tmp_path: Path) -> None:
        folder = tmp_path / "in"
        for _ in range(4):
            write_series(folder, 40)
        cancel = threading.Event()
        batches: list[int] = []

        def cancel_after_first_batch(counts: TaskCounts) -> None:
            batches.append(counts.indexed)
            if counts.indexed:
                cancel.set()

        context = make_context(
            Path(context.settings.storage.data_dir),
            context.engine,
            context.pool,
            ingest__batch_size=32,
        )
        record = run(context, folder, cancel=cancel, on_progress=cancel_after_first_batch)

        assert record.status == "cancelled"
        assert 0 < record.counts.indexed < 160
        # Every indexed instance has its file state, and nothing more.
        assert count(context.engine, instances) == record.counts.indexed
        assert count(context.engine, indexed_files) == record.counts.indexed

        finished = run(context, folder)

        assert finished.counts.skipped == record.counts.indexed
        assert count(context.engine, instances) == 160

    def test_duplicate_rejected_by_policy(
        self, tmp_path: Path, migrated_engine: Engine, pool: ReaderPool
    ) -> None:
        context = make_context(
            tmp_path / "data", migrated_engine, pool, storage__duplicate_policy="reject"
        )
        folder = tmp_path / "in"
        [ds] = write_series(folder, 1)
        IndexWriter(migrated_engine).add_instance(stored_instance(ds, "aa/bb/first.dcm"))

        record = run(context, folder)

        [entry] = context.tasks.files(record.id)
        assert entry.reason == DUPLICATE_REASON.format(uid=ds.SOPInstanceUID)
        assert indexed_uids(migrated_engine) == {ds.SOPInstanceUID: "aa/bb/first.dcm"}


class TestImport:
    def test_files_copied(self, context: IngestContext, tmp_path: Path) -> None:
        folder = tmp_path / "in"
        datasets = write_series(folder, 2)
        sources = {p: p.read_bytes() for p in folder.rglob("*.dcm")}

        record = run(context, folder, Mode.IMPORT)

        assert record.counts.indexed == 2
        keys = indexed_uids(context.engine)
        assert set(keys) == {ds.SOPInstanceUID for ds in datasets}
        for key in keys.values():
            assert context.storage.path_for(key).is_file()
            assert context.storage.path_for(key).is_relative_to(context.storage.root)
        assert {p: p.read_bytes() for p in folder.rglob("*.dcm")} == sources

    def test_reimport_of_changed_file_replaces_copy(
        self, context: IngestContext, tmp_path: Path
    ) -> None:
        folder = tmp_path / "in"
        [ds] = write_series(folder, 1)
        run(context, folder, Mode.IMPORT)
        first_key = indexed_uids(context.engine)[ds.SOPInstanceUID]
        os.utime(next(folder.rglob("*.dcm")), (time.time() - 30, time.time() - 30))

        run(context, folder, Mode.IMPORT)

        second_key = indexed_uids(context.engine)[ds.SOPInstanceUID]
        assert second_key != first_key
        assert not context.storage.path_for(first_key).exists()
        assert context.storage.path_for(second_key).exists()


class TestRemove:
    def test_in_place_file_kept(self, context: IngestContext, tmp_path: Path) -> None:
        folder = tmp_path / "in"
        datasets = write_series(folder, 2)
        run(context, folder)
        archive = Archive(context.settings, context.engine, context.storage)

        result = archive.remove(Level.STUDY, STUDY, delete_files=True)

        assert set(result.removed) == {ds.SOPInstanceUID for ds in datasets}
        assert (result.deleted_files, result.kept_in_place) == (0, 2)
        assert len(list(folder.rglob("*.dcm"))) == 2
        assert count(context.engine, instances) == 0
        assert count(context.engine, indexed_files) == 0

    def test_imported_file_deleted(self, context: IngestContext, tmp_path: Path) -> None:
        folder = tmp_path / "in"
        datasets = write_series(folder, 2)
        run(context, folder, Mode.IMPORT)
        keys = indexed_uids(context.engine)
        archive = Archive(context.settings, context.engine, context.storage)

        result = archive.remove(Level.IMAGE, datasets[0].SOPInstanceUID, delete_files=True)

        assert result.removed == (datasets[0].SOPInstanceUID,)
        assert result.deleted_files == 1
        assert not context.storage.path_for(keys[datasets[0].SOPInstanceUID]).exists()
        assert context.storage.path_for(keys[datasets[1].SOPInstanceUID]).exists()

    def test_series_without_delete_keeps_files(
        self, context: IngestContext, tmp_path: Path
    ) -> None:
        folder = tmp_path / "in"
        datasets = write_series(folder, 2)
        run(context, folder, Mode.IMPORT)
        keys = indexed_uids(context.engine)
        archive = Archive(context.settings, context.engine, context.storage)

        result = archive.remove(Level.SERIES, datasets[0].SeriesInstanceUID)

        assert len(result.removed) == 2
        assert result.deleted_files == 0
        assert all(context.storage.path_for(key).exists() for key in keys.values())

    def test_unknown_uid(self, context: IngestContext) -> None:
        archive = Archive(context.settings, context.engine, context.storage)

        assert archive.remove(Level.STUDY, "1.2.3.4").removed == ()


def table_snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Rows of the hierarchy tables without keys and times, sorted."""
    ignored = {"pk", "patient_pk", "study_pk", "series_pk", "updated_at", "received_at"}
    snapshot = {}
    with engine.connect() as connection:
        for table in (patients, studies, series, instances):
            columns = [c for c in table.c if c.name not in ignored]
            rows = connection.execute(select(*columns)).all()
            snapshot[table.name] = sorted(tuple(str(v) for v in row) for row in rows)
    return snapshot


class TestBatchWriter:
    def test_batch_equals_one_by_one(self, migrated_engine: Engine) -> None:
        writer = IndexWriter(migrated_engine)
        first = make_instance(PatientID="P1", StudyDescription="first")
        moved = make_instance(
            SOPInstanceUID=first.SOPInstanceUID,
            StudyInstanceUID=first.StudyInstanceUID,
            SeriesInstanceUID=new_uid(),
            PatientID="P1",
            StudyDescription="second",
        )
        other = make_instance(PatientID="P2", StudyInstanceUID=first.StudyInstanceUID)
        existing = make_instance(PatientID="P3")
        replacement = make_instance(SOPInstanceUID=existing.SOPInstanceUID, PatientID="P4")
        batch = [
            stored_instance(first, "k/1.dcm"),
            stored_instance(moved, "k/2.dcm"),
            stored_instance(other, "k/3.dcm"),
            stored_instance(replacement, "k/5.dcm"),
        ]

        writer.add_instance(stored_instance(existing, "k/4.dcm"))
        batch_outcomes = writer.add_instances(batch)
        batch_tables = table_snapshot(migrated_engine)
        with migrated_engine.begin() as connection:
            for table in (instances, series, studies, patients):
                connection.execute(table.delete())
        writer.add_instance(stored_instance(existing, "k/4.dcm"))
        single_outcomes = [writer.add_instance(item) for item in batch]

        assert batch_tables == table_snapshot(migrated_engine)
        assert batch_outcomes == single_outcomes

    @pytest.mark.parametrize("move", ["series_to_other_study", "study_to_other_patient"])
    def test_new_batch_moving_parent(self, migrated_engine: Engine, move: str) -> None:
        # Only new instances, so the batch writer must notice the move itself.
        writer = IndexWriter(migrated_engine)
        first = make_instance(PatientID="P1")
        if move == "series_to_other_study":
            second = make_instance(PatientID="P1", SeriesInstanceUID=first.SeriesInstanceUID)
        else:
            second = make_instance(PatientID="P2", StudyInstanceUID=first.StudyInstanceUID)
        batch = [stored_instance(first, "k/1.dcm"), stored_instance(second, "k/2.dcm")]

        writer.add_instances(batch)
        batch_tables = table_snapshot(migrated_engine)
        with migrated_engine.begin() as connection:
            for table in (instances, series, studies, patients):
                connection.execute(table.delete())
        for item in batch:
            writer.add_instance(item)

        assert batch_tables == table_snapshot(migrated_engine)

    def test_duplicates_kept_out_without_replace(self, migrated_engine: Engine) -> None:
        writer = IndexWriter(migrated_engine)
        ds = make_instance()
        writer.add_instance(stored_instance(ds, "k/1.dcm"))

        outcomes = writer.add_instances([stored_instance(ds, "k/2.dcm")], replace=False)

        assert outcomes == [None]
        assert indexed_uids(migrated_engine) == {ds.SOPInstanceUID: "k/1.dcm"}

    def test_also_runs_in_transaction(self, migrated_engine: Engine) -> None:
        writer = IndexWriter(migrated_engine)

        def fail(_connection: Any, _outcomes: Any) -> None:
            raise RuntimeError("stop")

        with pytest.raises(RuntimeError):
            writer.add_instances([stored_instance(make_instance())], also=fail)

        assert count(migrated_engine, instances) == 0


def test_stored_instance_helper_types() -> None:
    # The batch tests reuse the single-instance helper of test_index.
    assert isinstance(stored_instance(make_instance()), StoredInstance)


class TestStorageFailure:
    def test_failed_copy_retried_next_time(self, context: IngestContext, tmp_path: Path) -> None:
        folder = tmp_path / "in"
        [ds] = write_series(folder, 1)
        # A file where the storage's temporary folder belongs makes every copy fail.
        temp_dir = context.storage.temp_dir
        temp_dir.rmdir()
        temp_dir.write_bytes(b"")

        failed = run(context, folder, Mode.IMPORT)
        remembered = count(context.engine, indexed_files)
        temp_dir.unlink()
        temp_dir.mkdir()
        retried = run(context, folder, Mode.IMPORT)

        [entry] = context.tasks.files(failed.id)
        assert entry.outcome == "failed"
        assert entry.reason.startswith("Unexpected error: ")
        assert remembered == 0
        assert retried.counts.indexed == 1
        assert retried.counts.skipped == 0
        assert set(indexed_uids(context.engine)) == {ds.SOPInstanceUID}


@contextlib.contextmanager
def failing_inserts_after(engine: Engine, count: int) -> Iterator[None]:
    """Make the database refuse new instances once ``count`` are indexed, by a trigger."""
    if engine.dialect.name == "sqlite":
        create = [
            "CREATE TRIGGER fail_inserts BEFORE INSERT ON instances "
            f"WHEN (SELECT count(*) FROM instances) >= {count} "
            "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        ]
        drop = ["DROP TRIGGER fail_inserts"]
    else:
        create = [
            "CREATE FUNCTION fail_inserts() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF (SELECT count(*) FROM instances) >= {count} THEN "
            "RAISE EXCEPTION 'disk I/O error'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER fail_inserts BEFORE INSERT ON instances "
            "FOR EACH ROW EXECUTE FUNCTION fail_inserts()",
        ]
        drop = ["DROP TRIGGER fail_inserts ON instances", "DROP FUNCTION fail_inserts()"]
    with engine.begin() as connection:
        for statement in create:
            connection.exec_driver_sql(statement)
    try:
        yield
    finally:
        with engine.begin() as connection:
            for statement in drop:
                connection.exec_driver_sql(statement)


class TestIndexFailure:
    def test_import_leaves_no_orphan_copies(
        self, tmp_path: Path, migrated_engine: Engine, pool: ReaderPool
    ) -> None:
        context = make_context(tmp_path / "data", migrated_engine, pool, ingest__batch_size=2)
        folder = tmp_path / "in"
        write_series(folder, 12)
        # The database fails every transaction once two instances are indexed,
        # in whichever worker process writes it.
        with failing_inserts_after(migrated_engine, 2):
            record = run(context, folder, Mode.IMPORT)

        stored = {
            path
            for path in context.storage.root.rglob("*")
            if path.is_file() and context.storage.temp_dir not in path.parents
        }
        indexed = {context.storage.path_for(key) for key in indexed_uids(context.engine).values()}
        assert record.status == "failed"
        assert "The index database failed" in record.message
        assert "disk I/O error" in record.message
        assert 0 < len(indexed) < 12
        assert stored == indexed
