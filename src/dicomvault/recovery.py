"""Start-up recovery: remove the objects that a killed process wrote but never indexed.

Such an object was never acknowledged, because success is reported only after
the index commit. The write journal (:mod:`dicomvault.storage.journal`) names
every candidate, so recovery checks those keys against the index instead of
listing the whole storage.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine, select

from dicomvault.index.schema import instances
from dicomvault.storage.base import Storage, StorageError
from dicomvault.storage.journal import JournalEntry, read_abandoned_journals

LOGGER = logging.getLogger(__name__)

JOURNAL_DIR_NAME = "journal"
_BATCH = 500


@dataclasses.dataclass(frozen=True)
class RecoveryReport:
    """Counts of one start-up recovery: journals read, objects checked, objects removed."""

    journals: int = 0
    checked: int = 0
    removed: int = 0


def journal_directory(data_dir: Path) -> Path:
    """Return the folder of the write journals of a data directory."""
    return data_dir / JOURNAL_DIR_NAME


def remove_unindexed_writes(data_dir: Path, storage: Storage, engine: Engine) -> RecoveryReport:
    """Delete the journaled objects of dead processes that the index does not name.

    A journal is removed once all its objects are checked; if the index or
    the storage fails, the journal stays for the next start-up.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        If the index cannot be read.
    """
    report = RecoveryReport()
    for journal in read_abandoned_journals(journal_directory(data_dir)):
        try:
            removed = _remove_unindexed(journal.entries, storage, engine)
        except BaseException:
            journal.keep()
            raise
        journal.discard()
        report = RecoveryReport(
            report.journals + 1, report.checked + len(journal.entries), report.removed + removed
        )
    if report.removed:
        LOGGER.warning(
            "Removed %d stored objects that were written but never indexed, found in %d "
            "write journals of stopped processes",
            report.removed,
            report.journals,
        )
    return report


def _remove_unindexed(entries: Sequence[JournalEntry], storage: Storage, engine: Engine) -> int:
    removed = 0
    for start in range(0, len(entries), _BATCH):
        batch = entries[start : start + _BATCH]
        indexed = _indexed_keys(engine, {entry.sop_instance_uid for entry in batch})
        for entry in batch:
            if entry.storage_key in indexed.get(entry.sop_instance_uid, ()):
                continue
            if _delete(storage, entry):
                removed += 1
    return removed


def _indexed_keys(engine: Engine, uids: set[str]) -> dict[str, set[str]]:
    query = select(instances.c.sop_instance_uid, instances.c.storage_key).where(
        instances.c.sop_instance_uid.in_(sorted(uids))
    )
    keys: dict[str, set[str]] = {}
    with engine.connect() as connection:
        for row in connection.execute(query):
            keys.setdefault(row.sop_instance_uid, set()).add(row.storage_key)
    return keys


def _delete(storage: Storage, entry: JournalEntry) -> bool:
    """Delete the object of an unindexed entry; return whether it existed."""
    try:
        if not storage.exists(entry.storage_key):
            return False
        storage.delete(entry.storage_key)
    except OSError as exc:  # StorageError included
        raise StorageError(
            f"Cannot remove {entry.storage_key}, written for {entry.sop_instance_uid} "
            f"but never indexed: {exc}"
        ) from exc
    LOGGER.info(
        "Removed %s, written for %s but never indexed", entry.storage_key, entry.sop_instance_uid
    )
    return True
