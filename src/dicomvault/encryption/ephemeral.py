"""A temporary file whose bytes on disk are encrypted under a key held only in memory.

With encryption at rest on, request bodies that the archive spools to a
temporary file before storing them must not reach the disk in clear either.
The key is random and never written anywhere, so the file's bytes are
unreadable once the object is gone.
"""

from __future__ import annotations

import io
import os
from typing import IO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dicomvault.encryption.keys import KEY_BYTES
from dicomvault.encryption.object_format import (
    DEFAULT_SEGMENT_SIZE,
    NONCE_PREFIX_BYTES,
    TAG_BYTES,
    SegmentCipher,
)

_ASSOCIATED_DATA = b"dicomvault temporary file"


class EphemeralSealedFile:
    """Plaintext appended by :meth:`write`, stored in ``file`` as AES-256-GCM segments.

    Full segments are sealed as they fill; the last, partial segment stays in
    memory. :meth:`seek` and :meth:`read` return plaintext from any offset,
    including the part not yet sealed. The object owns ``file``.
    """

    def __init__(self, file: IO[bytes], segment_size: int = DEFAULT_SEGMENT_SIZE) -> None:
        self._file = file
        self._segment_size = segment_size
        self._cipher = SegmentCipher(
            AESGCM.generate_key(bit_length=KEY_BYTES * 8),
            os.urandom(NONCE_PREFIX_BYTES),
            _ASSOCIATED_DATA,
        )
        self._sealed_segments = 0
        self._tail = bytearray()
        self._position = 0

    @property
    def size(self) -> int:
        """The number of plaintext bytes written."""
        return self._sealed_segments * self._segment_size + len(self._tail)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; return its length."""
        self._tail += data
        full = len(self._tail) // self._segment_size
        if full:
            self._file.seek(self._sealed_segments * (self._segment_size + TAG_BYTES))
            with memoryview(self._tail) as view:
                for number in range(full):
                    start = number * self._segment_size
                    with view[start : start + self._segment_size] as segment:
                        sealed = self._cipher.seal(self._sealed_segments, segment, False)
                    self._file.write(sealed)
                    self._sealed_segments += 1
            del self._tail[: full * self._segment_size]
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the read position to ``offset`` from the start; return it.

        Raises
        ------
        ValueError
            If ``whence`` is not SEEK_SET or ``offset`` is negative.
        """
        if whence != io.SEEK_SET or offset < 0:
            raise ValueError("only seeking to an offset from the start is supported")
        self._position = offset
        return offset

    def read(self, size: int | None = -1) -> bytes:
        """Return up to ``size`` plaintext bytes from the read position (all with -1 or None).

        Raises
        ------
        OSError
            If a sealed segment fails authentication: the file was changed.
        """
        end = self.size if size is None or size < 0 else min(self.size, self._position + size)
        parts = []
        while self._position < end:
            index, offset = divmod(self._position, self._segment_size)
            plaintext = self._segment(index)
            piece = plaintext[offset : offset + end - self._position]
            parts.append(piece)
            self._position += len(piece)
        return b"".join(parts)

    def close(self) -> None:
        """Close and so delete the temporary file, and drop the plaintext in memory."""
        self._file.close()
        self._tail = bytearray()

    def _segment(self, index: int) -> bytes:
        if index >= self._sealed_segments:
            return bytes(self._tail)
        sealed_size = self._segment_size + TAG_BYTES
        self._file.seek(index * sealed_size)
        sealed = self._file.read(sealed_size)
        try:
            return self._cipher.open(index, sealed, False)
        except InvalidTag:
            raise OSError(
                f"The temporary file fails authentication at segment {index}: it was changed"
            ) from None
