"""The storage protocol every back-end implements: put, open, delete, exists."""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Protocol

_KEY_RE = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")


class StorageError(OSError):
    """A storage operation failed; the message names the key and the cause."""


class StorageFullError(StorageError):
    """The storage accepts no new object: it is full, over quota or read-only."""


class Storage(Protocol):
    """Storage of the bytes of stored instances, addressed by opaque keys.

    Keys are relative, slash-separated names chosen by the archive, such as
    ``ab/cd/abcd...ef.dcm``. ``put`` is atomic: after it returns the object is
    durable and complete, and a failure leaves no object under the key.

    Keys of the form ``inplace:/absolute/path`` (see
    :mod:`dicomvault.storage.in_place`) reference files indexed where they
    are, and keys of the form ``inbucket:bucket/object-key`` (see
    :mod:`dicomvault.storage.in_bucket`) objects indexed where they are in
    an S3 bucket. Back-ends open them but never write or delete them.
    """

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        """Write the concatenated chunks under ``key`` durably; return their size in bytes.

        Raises
        ------
        StorageFullError
            If there is no space left.
        StorageError
            On any other write failure.
        """
        ...

    def open(self, key: str) -> BinaryIO:
        """Open the object for reading: a seekable stream of the bytes given to ``put``.

        Raises
        ------
        FileNotFoundError
            If no object has this key.
        StorageError
            If the object cannot be read, such as an encrypted object that
            fails authentication.
        """
        ...

    def plain_path(self, key: str) -> Path | None:
        """Return the path of a local file that contains the object's bytes unchanged.

        For code that hands a path to another library. None when the object
        can only be read through :meth:`open`, as an encrypted object can.
        """
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""
        ...

    def exists(self, key: str) -> bool:
        """Return whether an object has this key."""
        ...

    def describe(self) -> str:
        """Return a one-line description for logs, without secrets."""
        ...

    def free_bytes(self) -> int | None:
        """Return the free space for new objects in bytes; None if the back-end cannot tell."""
        ...


def check_stored_key(key: str) -> None:
    """Check that ``key`` is a key the archive stores objects under.

    Such keys are relative names of safe characters. Their parts never start
    with '.', which marks names the back-ends reserve for themselves, such as
    the temporary folder and the key record of encrypted storage.

    Raises
    ------
    ValueError
        If the key is not such a name.
    """
    parts = key.split("/")
    if not _KEY_RE.fullmatch(key) or any(part.startswith(".") for part in parts):
        raise ValueError(
            f"Invalid storage key {key!r}: expected a relative name such as "
            "'ab/cd/name.dcm' whose parts do not start with '.'"
        )


class SizedReader(io.RawIOBase):
    """A read-only binary stream of known ``size`` that any position can be read from.

    Subclasses set ``size`` and implement ``readinto`` from ``_position``;
    this class keeps the position for ``seek`` and ``tell``.
    """

    size: int
    _position: int = 0

    def readable(self) -> bool:
        """Return True: the stream reads."""
        return True

    def seekable(self) -> bool:
        """Return True: any position can be read."""
        return True

    def tell(self) -> int:
        """Return the position in the stream."""
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to a position in the stream; return it. Nothing is read until a read.

        Raises
        ------
        ValueError
            If the position would be negative or ``whence`` is unknown.
        """
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._position + offset
        elif whence == io.SEEK_END:
            position = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}: expected 0, 1 or 2")
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._position = position
        return position
