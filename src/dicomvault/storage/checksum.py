"""SHA-256 checksums of stored instances, computed while the bytes are written or read."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO

# Bytes read per call when a stored object is checked.
READ_CHUNK_BYTES = 1024 * 1024


class Sha256Chunks:
    """An iterable of the given chunks that computes the SHA-256 of their bytes as they pass.

    Give it to ``Storage.put`` in place of the chunks. After the write,
    :meth:`hexdigest` returns the checksum of the bytes written, so the
    object is never read back. Encrypted storage seals the bytes after they
    pass, so the checksum is the one of the plain DICOM bytes.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks
        self._hash = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self._hash.update(chunk)
            yield chunk

    def hexdigest(self) -> str:
        """Return the SHA-256 of the chunks passed so far, as 64 lowercase hex digits."""
        return self._hash.hexdigest()


def sha256_of_stream(stream: BinaryIO) -> str:
    """Read ``stream`` to its end in chunks; return the SHA-256 of its bytes in hex."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(READ_CHUNK_BYTES), b""):
        digest.update(chunk)
    return digest.hexdigest()
