"""The files indexed from folders, with the size and modification time seen last."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, Engine, delete, select

from dicomvault.index.bulk_upsert import BulkUpsert
from dicomvault.index.schema import indexed_files

_CHUNK = 500  # values per IN list, below SQLite's bound parameter limit
_COLUMNS = (
    "path",
    "size",
    "mtime_ns",
    "mode",
    "outcome",
    "sop_instance_uid",
    "storage_key",
    "reason",
    "updated_at",
    "etag",
)


@dataclasses.dataclass(frozen=True)
class FileState:
    """One indexed file as the index remembers it.

    ``outcome`` is "indexed", "failed" or "ignored"; ``storage_key`` is the
    key of the instance read from the file ('' unless indexed).
    """

    path: str
    size: int
    mtime_ns: int
    mode: str
    outcome: str
    sop_instance_uid: str = ""
    storage_key: str = ""
    reason: str = ""
    etag: str = ""


class IndexedFiles:
    """Reads and records :class:`FileState` rows."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._upsert = BulkUpsert(engine, indexed_files, "path", _COLUMNS)

    def under(self, folder: str, exact_prefix: bool = False) -> dict[str, FileState]:
        """Return the remembered files under ``folder`` (an absolute path), by path.

        With ``exact_prefix``, ``folder`` is taken as a prefix of the paths as
        it is, as for the s3:// URL of a bucket prefix.
        """
        prefix = folder if exact_prefix else folder.rstrip("/") + "/"
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        statement = select(indexed_files).where(
            indexed_files.c.path.like(escaped + "%", escape="\\")
        )
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        # SQLite's LIKE ignores the case of ASCII letters; the prefix must match exactly.
        return {row.path: _state(row) for row in rows if row.path.startswith(prefix)}

    def record(self, connection: Connection, states: Sequence[FileState]) -> None:
        """Insert or update the rows of ``states`` in the caller's transaction."""
        if not states:
            return
        now = datetime.datetime.now(datetime.UTC)
        # Built field by field: dataclasses.asdict deep-copies every value.
        rows = [
            {
                "path": state.path,
                "size": state.size,
                "mtime_ns": state.mtime_ns,
                "mode": state.mode,
                "outcome": state.outcome,
                "sop_instance_uid": state.sop_instance_uid,
                "storage_key": state.storage_key,
                "reason": state.reason,
                "updated_at": now,
                "etag": state.etag,
            }
            for state in states
        ]
        # Several states of one path in a batch (a file read twice) keep the last.
        self._upsert.execute(connection, list({row["path"]: row for row in rows}.values()))

    def forget(self, connection: Connection, paths: Iterable[str]) -> None:
        """Delete the rows of ``paths`` in the caller's transaction."""
        path_list = list(paths)
        for start in range(0, len(path_list), _CHUNK):
            chunk = path_list[start : start + _CHUNK]
            connection.execute(delete(indexed_files).where(indexed_files.c.path.in_(chunk)))

    def forget_instances(self, connection: Connection, sop_instance_uids: Iterable[str]) -> None:
        """Delete the rows of files whose instance is removed from the index."""
        uids = list(sop_instance_uids)
        for start in range(0, len(uids), _CHUNK):
            chunk = uids[start : start + _CHUNK]
            connection.execute(
                delete(indexed_files).where(indexed_files.c.sop_instance_uid.in_(chunk))
            )


def _state(row: object) -> FileState:
    return FileState(
        path=row.path,  # type: ignore[attr-defined]
        size=row.size,  # type: ignore[attr-defined]
        mtime_ns=row.mtime_ns,  # type: ignore[attr-defined]
        mode=row.mode,  # type: ignore[attr-defined]
        outcome=row.outcome,  # type: ignore[attr-defined]
        sop_instance_uid=row.sop_instance_uid,  # type: ignore[attr-defined]
        storage_key=row.storage_key,  # type: ignore[attr-defined]
        reason=row.reason,  # type: ignore[attr-defined]
        etag=row.etag,  # type: ignore[attr-defined]
    )
