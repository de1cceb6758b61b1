"""A journal of storage writes that have not reached the index yet.

A store writes the object first and commits the index row after, so a process
killed in between leaves an object that no index row names. Before it writes,
the archive appends the SOP Instance UID and the storage key to this journal.
The entry is settled when the index transaction has ended. A key must stay in
storage only if the index names it for that instance, so at start-up
:func:`read_abandoned_journals` gives back the entries of processes that died,
and the caller deletes every object the index does not name.

Each process writes its own journal file and holds an exclusive ``flock`` on
it while it lives, so a journal whose lock can be taken belongs to a dead
process, whatever its age. Entries are single ``write`` calls, so they
survive the death of the process in the page cache. After a power loss,
`dicomvault fsck` finds what the journal lost. A file is replaced by a new one after
:data:`ROTATE_AFTER_ENTRIES` entries and removed once its last entry is
settled, so journals stay small.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from dicomvault.storage.base import StorageError

LOGGER = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".journal"
ROTATE_AFTER_ENTRIES = 4096


@dataclasses.dataclass(frozen=True)
class JournalEntry:
    """A storage key written for an instance, which must be removed unless the index names it."""

    sop_instance_uid: str
    storage_key: str


class _JournalFile:
    """One open journal file, locked for the life of this process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.entries = 0
        self.unsettled = 0
        self.retired = False

    def append(self, entry: JournalEntry) -> None:
        line = f"{entry.sop_instance_uid} {entry.storage_key}\n".encode()
        os.write(self.fd, line)
        self.entries += 1
        self.unsettled += 1

    def remove(self) -> None:
        # Unlink before closing, so that no other process can take the lock
        # of a file this process still considers its own.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)


class PendingWrite:
    """The journal entry of one write, settled when its block ends unless deferred."""

    def __init__(self, owner: WriteJournal, journal: _JournalFile) -> None:
        self._owner = owner
        self._journal = journal
        self.deferred = False

    def defer(self) -> Callable[[], None]:
        """Keep the entry unsettled after the block; return the function that settles it.

        For a write whose index outcome is unknown: until the function is
        called, a start-up after a crash still finds the entry.
        """
        self.deferred = True
        return lambda: self._owner._settle(self._journal)


class WriteJournal:
    """Records the storage writes of this process until their index transaction ends.

    Thread-safe. Use :meth:`writing` around the write and the index commit of
    one key; :meth:`close` at shutdown.
    """

    def __init__(self, directory: Path, rotate_after: int = ROTATE_AFTER_ENTRIES) -> None:
        self.directory = directory
        self.rotate_after = rotate_after
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._current: _JournalFile | None = None

    @contextlib.contextmanager
    def writing(self, sop_instance_uid: str, storage_key: str) -> Iterator[PendingWrite]:
        """Record the write of ``storage_key`` before the block runs; settle it after.

        The block must end only when the index transaction has committed, or
        has failed and the object has been deleted. Otherwise the block
        calls :meth:`PendingWrite.defer` on the value it gets.

        Raises
        ------
        StorageError
            If the journal cannot be written; the block does not run then.
        """
        try:
            journal = self._append(JournalEntry(sop_instance_uid, storage_key))
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError(
                f"Cannot write the write journal in {self.directory}: {exc}"
            ) from exc
        pending = PendingWrite(self, journal)
        try:
            yield pending
        finally:
            if not pending.deferred:
                self._settle(journal)

    def close(self) -> None:
        """Remove the current journal if none of its entries is unsettled."""
        with self._lock:
            current, self._current = self._current, None
            if current is None:
                return
            current.retired = True
            if current.unsettled == 0:
                current.remove()

    def _append(self, entry: JournalEntry) -> _JournalFile:
        with self._lock:
            journal = self._current
            if journal is None or journal.entries >= self.rotate_after:
                if journal is not None:
                    self._retire(journal)
                journal = self._current = self._open_new()
            journal.append(entry)
            return journal

    def _settle(self, journal: _JournalFile) -> None:
        with self._lock:
            journal.unsettled -= 1
            if journal.retired and journal.unsettled == 0:
                journal.remove()

    @staticmethod
    def _retire(journal: _JournalFile) -> None:
        journal.retired = True
        if journal.unsettled == 0:
            journal.remove()

    def _open_new(self) -> _JournalFile:
        name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}{JOURNAL_SUFFIX}"
        return _JournalFile(self.directory / name)


@dataclasses.dataclass(frozen=True)
class AbandonedJournal:
    """The entries of a journal whose process died; :meth:`discard` removes the file."""

    path: Path
    entries: tuple[JournalEntry, ...]
    _fd: int

    def discard(self) -> None:
        """Delete the journal file and release its lock."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)

    def keep(self) -> None:
        """Release the lock and leave the file for the next start-up."""
        os.close(self._fd)


def read_abandoned_journals(directory: Path) -> Iterator[AbandonedJournal]:
    """Yield the journals in ``directory`` whose writing process has ended.

    Each is locked until the caller calls ``discard`` or ``keep``. Journals
    of living processes are skipped. A last line cut short is ignored: its
    write never completed, and the object write comes after it.
    """
    if not directory.is_dir():
        return
    for path in sorted(directory.glob(f"*{JOURNAL_SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        with os.fdopen(os.dup(fd), "rb") as file:
            text = file.read().decode("ascii", errors="replace")
        yield AbandonedJournal(path, tuple(_parse(text, path)), fd)


def _parse(text: str, path: Path) -> Iterator[JournalEntry]:
    lines = text.split("\n")
    for line in lines[:-1]:  # the part after the last newline is incomplete
        uid, _, key = line.partition(" ")
        if uid and key:
            yield JournalEntry(uid, key)
        else:
            LOGGER.warning("Ignored a malformed line in the write journal %s", path)
