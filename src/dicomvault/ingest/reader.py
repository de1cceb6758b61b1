"""Read one file's or bucket object's header for indexing: the work each worker process does.

Everything here runs in worker processes, so the functions take and return
plain picklable values and never touch the index database. A file or
object is read whole, because only the whole byte stream shows whether it
is truncated.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import enum
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dicomvault.config import StorageSettings
from dicomvault.dicom.encoded_json import EncodedJSON
from dicomvault.dicom.fast_header import describe_encoded
from dicomvault.dicom.header import (
    InstanceHeader,
    InvalidDatasetError,
    MissingAttributeError,
    describe_instance,
    encode_file_meta,
    read_header,
)
from dicomvault.dicom.part10 import split_part10
from dicomvault.ingest.bucket import (
    BucketError,
    ObjectChangedError,
    ObjectNotFoundError,
    is_bucket_url,
    read_object,
    source_client,
    split_object_url,
)
from dicomvault.ingest.jobs import FileJob, Mode, ReadOptions
from dicomvault.storage.base import Storage, StorageError
from dicomvault.storage.checksum import Sha256Chunks
from dicomvault.storage.filesystem import FilesystemStorage
from dicomvault.storage.in_bucket import in_bucket_key
from dicomvault.storage.in_place import in_place_key
from dicomvault.storage.journal import WriteJournal

if TYPE_CHECKING:
    from dicomvault.storage.s3 import S3Storage

MEDIA_STORAGE_DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"
# Objects of a chunk read at once by each worker; each is whole in memory while it is read.
OBJECT_READ_THREADS = 8
DICOMDIR_REASON = (
    "DICOMDIR (Media Storage Directory Storage): a directory of other files, not an instance"
)


class Outcome(enum.StrEnum):
    """The outcome of reading one file."""

    INSTANCE = "instance"  # read; ready to be indexed
    FAILED = "failed"  # not indexed, for the given ``reason``
    IGNORED = "ignored"  # a DICOMDIR, recognised and not indexed
    CHANGED = "changed"  # size, modification time or ETag changed since the scan: read later


@dataclasses.dataclass(frozen=True)
class ReadResult:
    """The result of reading one file.

    For an instance, ``storage_key`` is where the index points: the in-place
    or in-bucket key of the file or object itself, or the key of the copy
    written in import mode, which the caller deletes if indexing fails.
    ``size`` is the size of the file the key names. ``retry`` marks a
    failure of the file system or of the bucket rather than of the file's
    content, which the next task tries again. ``sha256`` is the checksum
    of the file as read, or of the copy as written, in hex.
    """

    job: FileJob
    outcome: Outcome
    reason: str = ""
    header: InstanceHeader | None = None
    storage_key: str = ""
    size: int = 0
    retry: bool = False
    sha256: str | None = None


_storages: dict[tuple[str, StorageSettings | None, StorageSettings | None], Storage] = {}
# The write journal of this process per journal folder, and how to settle each copy's entry.
_journals: dict[str, WriteJournal] = {}
_journals_lock = threading.Lock()
_unsettled: dict[str, Callable[[], None]] = {}


def read_files(jobs: list[FileJob], options: ReadOptions) -> list[ReadResult]:
    """Read a chunk of files and return one result per job, in order.

    An error in one file becomes that file's result, so the rest of the
    chunk is still read.
    """
    contents: list[bytes | ReadResult | Exception]
    if any(is_bucket_url(job.path) for job in jobs):
        # Each GET waits for the network far longer than the parsing takes,
        # so several threads fetch the objects of a chunk at once. Parsing
        # stays in this thread: pydicom and the warnings filters it relies
        # on are not thread-safe.
        with concurrent.futures.ThreadPoolExecutor(OBJECT_READ_THREADS) as executor:
            contents = list(executor.map(lambda job: _load_safely(job, options), jobs))
    else:
        contents = [_load_safely(job, options) for job in jobs]
    return [_parse_safely(job, loaded, options) for job, loaded in zip(jobs, contents, strict=True)]


def read_file(job: FileJob, options: ReadOptions) -> ReadResult:
    """Read and check one file or bucket object; in import mode, also copy it into the storage.

    A job whose path is an object URL (``s3://bucket/key``) is read with
    GetObject through the client of ``options.source``, and must still
    have the job's ETag and size. In place, its instance is indexed under
    an in-bucket key (:mod:`dicomvault.storage.in_bucket`).

    Raises
    ------
    ValueError
        If the job is an object and ``options.source`` is None.
    """
    return _parse(job, _load(job, options), options)


def _load(job: FileJob, options: ReadOptions) -> bytes | ReadResult:
    """Return the content of the file or object of ``job``, or its result if it cannot be read."""
    # NOTE: the whole file is in memory while it is read, so a worker needs
    # as much memory as the largest file (multi-frame files may be gigabytes).
    return _read_object(job, options) if is_bucket_url(job.path) else _read_local_file(job)


def _load_safely(job: FileJob, options: ReadOptions) -> bytes | ReadResult | Exception:
    try:
        return _load(job, options)
    except Exception as exc:  # reported as the file's result by _parse_safely
        return exc


def _parse_safely(
    job: FileJob, loaded: bytes | ReadResult | Exception, options: ReadOptions
) -> ReadResult:
    try:
        if isinstance(loaded, Exception):
            raise loaded
        return _parse(job, loaded, options)
    except Exception as exc:  # one bad file must not lose the rest of the chunk
        reason = f"Unexpected error: {exc}"
        return ReadResult(job, Outcome.FAILED, reason, retry=True)


def _parse(job: FileJob, loaded: bytes | ReadResult, options: ReadOptions) -> ReadResult:
    """Check and describe the content of a file; in import mode, also copy it into the storage."""
    if isinstance(loaded, ReadResult):
        return loaded
    data = loaded
    if not data:
        return ReadResult(job, Outcome.FAILED, "Empty file")

    try:
        part10 = split_part10(data)
        if part10.media_storage_sop_class_uid == MEDIA_STORAGE_DIRECTORY_STORAGE:
            return ReadResult(job, Outcome.IGNORED, DICOMDIR_REASON)
        dataset = data[part10.dataset_offset :]
        header = describe_dataset(dataset, part10.transfer_syntax_uid)
    except MissingAttributeError as exc:
        return ReadResult(
            job,
            Outcome.FAILED,
            f"No {exc.attribute}; the archive needs the SOP Class, SOP Instance, "
            "Study Instance and Series Instance UIDs",
        )
    except InvalidDatasetError as exc:
        return ReadResult(job, Outcome.FAILED, str(exc))
    if header.sop_class_uid == MEDIA_STORAGE_DIRECTORY_STORAGE:
        return ReadResult(job, Outcome.IGNORED, DICOMDIR_REASON)

    if options.mode is Mode.IN_PLACE:
        if is_bucket_url(job.path):
            key = in_bucket_key(*split_object_url(job.path))
        else:
            key = in_place_key(job.path)
        return ReadResult(
            job,
            Outcome.INSTANCE,
            header=header,
            storage_key=key,
            size=job.size,
            sha256=hashlib.sha256(data).hexdigest(),
        )
    return _import(job, options, header, dataset)


def _read_local_file(job: FileJob) -> bytes | ReadResult:
    """Return the content of the file of ``job``, or the result if it cannot be indexed now."""
    try:
        with open(job.path, "rb") as file:
            data = file.read()
            status = os.fstat(file.fileno())
    except OSError as exc:
        reason = f"Cannot be read: {exc.strerror or exc}"
        return ReadResult(job, Outcome.FAILED, reason, retry=True)
    if (
        status.st_size != job.size
        or status.st_mtime_ns != job.mtime_ns
        or len(data) != status.st_size
    ):
        return ReadResult(job, Outcome.CHANGED, "The file changed while it was read")
    return data


def _read_object(job: FileJob, options: ReadOptions) -> bytes | ReadResult:
    """Return the content of the object of ``job``, or the result if it cannot be indexed now."""
    if options.source is None:
        raise ValueError(
            f"Cannot read {job.path}: the read options have no source settings for buckets"
        )
    bucket, key = split_object_url(job.path)
    try:
        return read_object(source_client(options.source), bucket, key, job.etag, job.size)
    except ObjectChangedError:
        return ReadResult(job, Outcome.CHANGED, "The object changed while it was read")
    except ObjectNotFoundError:
        # With retry set, no state is kept for the key, so the next task
        # reads an object uploaded again under it.
        reason = "The object was deleted after the bucket was listed"
        return ReadResult(job, Outcome.FAILED, reason, retry=True)
    except BucketError as exc:
        return ReadResult(job, Outcome.FAILED, str(exc), retry=True)


def describe_dataset(dataset: bytes, transfer_syntax_uid: str) -> InstanceHeader:
    """Describe an encoded dataset for the index.

    Raises
    ------
    InvalidDatasetError
        If the dataset cannot be parsed or lacks a required UID.
    """
    header = describe_encoded(dataset, transfer_syntax_uid)
    if header is not None:
        return header

    # Datasets the fast reader does not handle: the pydicom-based path.
    try:
        ds = read_header(dataset, transfer_syntax_uid)
        header = describe_instance(ds, transfer_syntax_uid)
        # Text pickles in microseconds; the JSON object's pydicom values do not.
        encoded = EncodedJSON(json.dumps(header.header_json))
        return dataclasses.replace(header, header_json=encoded)
    except InvalidDatasetError:
        raise
    except Exception as exc:  # pydicom raises many types for malformed values
        raise InvalidDatasetError(f"The dataset cannot be parsed: {exc}") from exc


def _import(
    job: FileJob, options: ReadOptions, header: InstanceHeader, dataset: bytes
) -> ReadResult:
    # Imported files take the form C-STORE gives stored files: the archive's
    # File Meta Information, then the dataset bytes unchanged.
    # Imported here, so that worker processes start without the index modules.
    from dicomvault.archive import new_storage_key

    storage = import_storage(options)
    meta = encode_file_meta(
        header.sop_class_uid, header.sop_instance_uid, header.transfer_syntax_uid
    )
    key = new_storage_key()
    written = Sha256Chunks((meta, dataset))
    try:
        with _journaled(options, header.sop_instance_uid, key):
            size = storage.put(key, written)
    except StorageError as exc:
        reason = f"Cannot be copied into the storage: {exc}"
        return ReadResult(job, Outcome.FAILED, reason, retry=True)
    return ReadResult(
        job,
        Outcome.INSTANCE,
        header=header,
        storage_key=key,
        size=size,
        sha256=written.hexdigest(),
    )


@contextlib.contextmanager
def _journaled(options: ReadOptions, sop_instance_uid: str, key: str) -> Iterator[None]:
    """Record the copy of ``key`` in this worker's write journal until :func:`settle_copies`.

    The entry stays when the block succeeds; it is settled at once when the
    block raises, because the storage then removed what it had written.

    Raises
    ------
    StorageError
        If the journal cannot be written; nothing is copied then.
    """
    if not options.journal_dir:
        yield
        return
    with _journals_lock:
        journal = _journals.get(options.journal_dir)
        if journal is None:
            try:
                journal = WriteJournal(Path(options.journal_dir))
            except OSError as exc:
                raise StorageError(
                    f"Cannot use the write journal folder {options.journal_dir}: {exc}"
                ) from exc
            _journals[options.journal_dir] = journal
    with journal.writing(sop_instance_uid, key) as pending:
        yield
        _unsettled[key] = pending.defer()


def settle_copies(storage_keys: Iterable[str]) -> None:
    """Settle the journal entries of copies that are now indexed or deleted."""
    for key in storage_keys:
        settle = _unsettled.pop(key, None)
        if settle is not None:
            settle()


def import_storage(options: ReadOptions) -> Storage:
    """Return the storage imported copies go to, opened once per worker process.

    The parent process checked the bucket and the keys before the workers started.
    """
    cache_key = (options.storage_root, options.s3, options.source)
    storage = _storages.get(cache_key)
    if storage is None:
        storage = _storages[cache_key] = _open_storage(options)
    return storage


def _open_storage(options: ReadOptions) -> Storage:
    # Imported here, so that workers import boto3 and the encryption
    # modules only when they need them.
    inner: FilesystemStorage | S3Storage
    if options.s3 is not None:
        from dicomvault.storage.s3 import S3Storage

        inner = S3Storage(options.s3)
    else:
        inner = FilesystemStorage(options.storage_root, options.source)
    if options.encryption is None:
        return inner

    from dicomvault.encryption.keys import load_key_provider
    from dicomvault.storage.encrypted import EncryptedStorage

    return EncryptedStorage(inner, load_key_provider(options.encryption))
