"""Encrypted storage: objects sealed on put and decrypted on open, over filesystem or S3 storage."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from dicomvault.encryption.keys import KeyProvider
from dicomvault.encryption.object_format import (
    DEFAULT_SEGMENT_SIZE,
    MAGIC,
    SealedObjectError,
    is_sealed,
    open_sealed,
    seal_chunks,
)
from dicomvault.storage.filesystem import FilesystemStorage
from dicomvault.storage.in_bucket import is_indexed_in_place

if TYPE_CHECKING:
    from dicomvault.storage.s3 import S3Storage

LOGGER = logging.getLogger(__name__)


class EncryptedStorage:
    """Stores every object in the sealed format of :mod:`dicomvault.encryption.object_format`.

    Each object gets a new data key, wrapped under the provider's current
    master key. :meth:`open` returns a seekable stream of the plaintext.

    Files and bucket objects indexed in place are read as they are and never
    encrypted, because the archive never modifies them. Objects stored before encryption was
    turned on are plaintext. They are read as they are while
    ``accept_plaintext`` is True, which the key record keeps until
    ``dicomvault keys rotate`` has encrypted them. After that, a plaintext
    object raises :class:`SealedObjectError`, so that a file placed in the
    storage folder or bucket by other means is never served.
    """

    def __init__(
        self,
        inner: FilesystemStorage | S3Storage,
        provider: KeyProvider,
        accept_plaintext: bool = False,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
    ) -> None:
        self.inner = inner
        self.provider = provider
        self.accept_plaintext = accept_plaintext
        self.segment_size = segment_size

    @property
    def root(self) -> Path:
        """The storage folder of encrypted filesystem storage.

        Raises
        ------
        TypeError
            If the inner storage is S3 storage, which has no folder.
        """
        if not isinstance(self.inner, FilesystemStorage):
            raise TypeError(f"Storage {self.inner.location} is not a folder")
        return self.inner.root

    @property
    def location(self) -> str:
        """The storage folder or bucket, for messages."""
        return self.inner.location

    def free_bytes(self) -> int | None:
        """Return the free space of the inner storage; see FilesystemStorage and S3Storage."""
        return self.inner.free_bytes()

    def describe(self) -> str:
        """Return a one-line description for logs, with the key id and no key material."""
        return (
            f"{self.inner.describe()}, encrypted with AES-256-GCM under master key "
            f"{self.provider.current_key_id}"
        )

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        """Encrypt the chunks and write them to ``key`` atomically; return the plaintext size.

        Raises
        ------
        ValueError
            If ``key`` is an in-place or in-bucket key.
        StorageFullError, StorageError
            As the inner storage's ``put``.
        """
        counter = _SizeCounter(chunks)
        self.inner.put(key, seal_chunks(counter, self.provider, self.segment_size))
        return counter.size

    def open(self, key: str) -> BinaryIO:
        """Open the object of ``key``; return a seekable stream of its plaintext.

        Raises
        ------
        FileNotFoundError
            If no object has this key.
        SealedObjectError
            If the object's key is not configured, it fails authentication,
            or it is plaintext while plaintext objects are not accepted.
        """
        file = self.inner.open(key)
        if is_indexed_in_place(key):
            return file
        try:
            prefix = file.read(len(MAGIC))
            if is_sealed(prefix):
                return open_sealed(file, self.provider, key)
            if not self.accept_plaintext:
                raise SealedObjectError(
                    f"Stored object {key} is not encrypted, although every stored object was "
                    "encrypted; it was placed in the storage folder by other means. Restore "
                    "it from a backup, or run 'dicomvault keys rotate' to encrypt it"
                )
            file.seek(0)
            return file
        except BaseException:
            file.close()
            raise

    def plain_path(self, key: str) -> Path | None:
        """Return the path of an in-place file; None for other objects, encrypted or remote."""
        if is_indexed_in_place(key):
            return self.inner.plain_path(key)
        return None

    def delete(self, key: str) -> None:
        """Remove the object of ``key``; see the inner storage's ``delete``."""
        self.inner.delete(key)

    def exists(self, key: str) -> bool:
        """Return whether the object of ``key`` exists."""
        return self.inner.exists(key)

    def remove_temporary_files(self, older_than: float = 0.0) -> int:
        """Delete what interrupted writes left; see the inner storage's method."""
        return self.inner.remove_temporary_files(older_than)


class _SizeCounter:
    """Passes chunks through and counts their bytes."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.size += len(chunk)
            yield chunk
