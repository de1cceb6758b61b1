"""Messages between the indexing process and its workers: file jobs, options, chunk summaries.

This module imports nothing heavy, so that the process that scans folders
and hands out chunks starts without pydicom; the workers import
:mod:`dicomvault.ingest.worker`, which does the reading and writing.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import NamedTuple

from dicomvault.config import EncryptionSettings, StorageSettings


class Mode(enum.StrEnum):
    """The mode of an indexing task: in place or import."""

    IN_PLACE = "in_place"  # the index references the file where it is
    IMPORT = "import"  # the file is copied into the archive's storage


class FileJob(NamedTuple):
    """A file or bucket object to read, with the size and modification time the scan saw.

    For an object, ``path`` is its URL ``s3://bucket/key`` and ``etag`` the
    ETag the listing gave, without quotes. The reader checks the size and
    the ETag of an object but not ``mtime_ns``.

    For an object of a bucket, ``path`` is its s3:// URL, ``mtime_ns`` is 0
    and ``etag`` is the ETag the listing saw.

    A named tuple rather than a dataclass: tens of thousands are built and
    sent to the workers per task, and tuples are faster to build and pickle.
    """

    path: str
    size: int
    mtime_ns: int
    etag: str = ""


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """Options of the workers: the mode, the storage that imports go to, and the source buckets.

    Imported copies go to the folder ``storage_root``, or to the bucket of
    ``s3`` when that is set (``storage_root`` is then unused). ``source``
    gives the endpoint, region and retry settings of the client that reads
    objects of source buckets; jobs of objects need it. The settings
    hold no credentials: each worker finds them where the archive does.
    ``encryption`` is set when imported copies are encrypted. Each worker
    then reads the master key from the same key file or variable as the
    archive. ``journal_dir``, when set, is the folder of the write journals
    (see :mod:`dicomvault.storage.journal`), where each worker records its
    copies until they are indexed or deleted.
    """

    mode: Mode
    storage_root: str
    encryption: EncryptionSettings | None = None
    s3: StorageSettings | None = None
    source: StorageSettings | None = None
    journal_dir: str = ""


@dataclasses.dataclass(frozen=True)
class ChunkOptions:
    """The options a worker needs to index a chunk: how to read, where to write, which task.

    ``index_url`` is the full URL of the index database, password included;
    it travels to the worker processes only, never to a log. ``chunk_pk``
    is set for a chunk of a bucket task claimed by ``owner`` (see
    :mod:`dicomvault.index.chunks`): the worker then marks it done and adds
    its counts to the task in the transaction that indexes it.
    """

    read: ReadOptions
    index_url: str
    task_id: int
    replace: bool
    chunk_pk: int = 0
    owner: str = ""

    def __repr__(self) -> str:
        return f"ChunkOptions(read={self.read!r}, task_id={self.task_id}, replace={self.replace})"


@dataclasses.dataclass
class ChunkSummary:
    """The outcome of indexing a chunk, for the parent's counts.

    ``changed`` lists the files that changed while they were read, to be
    read again later. A non-empty ``error`` means the index database failed
    and nothing of the chunk was written.
    """

    indexed: int = 0
    failed: int = 0
    ignored: int = 0
    changed: list[FileJob] = dataclasses.field(default_factory=list)
    error: str = ""
    lost: bool = False


def index_chunk(jobs: list[FileJob], options: ChunkOptions) -> ChunkSummary:
    """Read and index a chunk of files; see :func:`dicomvault.ingest.worker.index_files`."""
    # Imported here: the workers have it preloaded, the parent never needs it.
    from dicomvault.ingest.worker import index_files

    return index_files(jobs, options)
