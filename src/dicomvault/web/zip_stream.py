"""Write a zip archive as a stream of chunks, one member at a time, never whole in memory."""

from __future__ import annotations

import collections
import io
import time
import zipfile
from collections.abc import Iterable, Iterator


class _ChunkSink(io.RawIOBase):
    """A write-only, unseekable file that keeps what is written until it is drained.

    zipfile writes to an unseekable file with data descriptors after each
    member, so it never goes back to patch a header.
    """

    def __init__(self) -> None:
        super().__init__()
        self._chunks: collections.deque[bytes] = collections.deque()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._chunks.append(bytes(data))
        return len(data)

    def drain(self) -> Iterator[bytes]:
        while self._chunks:
            yield self._chunks.popleft()


def stream_zip(members: Iterable[tuple[str, Iterable[bytes]]]) -> Iterator[bytes]:
    """Yield the bytes of a zip archive of ``members``, each a name and the chunks of its content.

    Members are stored without compression (DICOM pixel data is often
    compressed already, and storing costs no CPU) and with Zip64 headers,
    because their sizes are not known before they are written. Memory use
    is bounded by the largest chunk of a member, not by the archive size.
    """
    sink = _ChunkSink()
    now = time.localtime()[:6]
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, chunks in members:
            info = zipfile.ZipInfo(name, date_time=now)
            info.compress_type = zipfile.ZIP_STORED
            with zf.open(info, mode="w", force_zip64=True) as member:
                for chunk in chunks:
                    member.write(chunk)
                    yield from sink.drain()
            yield from sink.drain()
    yield from sink.drain()
