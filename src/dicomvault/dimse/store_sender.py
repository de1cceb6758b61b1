"""C-STORE requests for retrieve sub-operations, sent from stored files.

pynetdicom's ``Association.send_c_store`` reparses the file meta of every
file, and before each request waits for the association's reactor to pause,
which it checks once a millisecond. For a stream of sub-operations that wait
is a large share of the time per instance. :class:`StoreSender` pauses the
reactor once for the whole stream and sends each request itself. Without
TLS it also writes the command set by hand and the data set straight from
the file, and it reads the response on its own thread. Over TLS it goes
through pynetdicom's encoder and message queue.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
import time
from io import BytesIO
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode, split_dataset

from dicomvault.dicom.header import InvalidDatasetError
from dicomvault.dicom.part10 import split_part10
from dicomvault.dimse.command_set import encode_store_request
from dicomvault.dimse.direct_receive import DirectReceiver, ReceiveError
from dicomvault.dimse.direct_send import MessageWriter, PartialMessageError, send_directly

LOGGER = logging.getLogger(__name__)

PREAMBLE_AND_PREFIX = 132
# (0002,0000) File Meta Information Group Length, explicit VR UL, length 4.
GROUP_LENGTH_ELEMENT = b"\x02\x00\x00\x00UL\x04\x00"
# Bytes read from a stream to find the end of a File Meta Information that
# has no group length. The meta of typical files is a few hundred bytes.
META_READ_LIMIT = 64 * 1024
PAUSE_TIMEOUT_SECONDS = 10.0
# pynetdicom's default is 1 ms; a retrieve keeps its DUL busy, so polling
# faster costs little CPU and saves most of that wait per instance.
RESPONSE_POLL_SECONDS = 0.0001


class SendError(RuntimeError):
    """A C-STORE request could not be sent or got no valid response."""


@dataclasses.dataclass(frozen=True)
class StoreOutcome:
    """The status of one C-STORE response and its Error Comment, if any."""

    status: int
    error_comment: str | None = None


@dataclasses.dataclass(frozen=True)
class Originator:
    """Move Originator AE Title and Message ID for C-MOVE sub-operations."""

    ae_title: str
    message_id: int


class StoreSender:
    """Send C-STORE requests on one association, for use as a context manager.

    On an association the archive requested (C-MOVE), the reactor is paused
    on entry and resumed on exit. On the association of a C-GET the archive
    is the acceptor and the requests are sent from the reactor's own thread,
    so no pause is needed. In both cases, unless the connection uses TLS,
    requests are written directly (see :mod:`dicomvault.dimse.direct_send`)
    and responses read on the sending thread (see
    :mod:`dicomvault.dimse.direct_receive`).
    """

    def __init__(self, assoc: Any) -> None:
        self.assoc = assoc
        self._restore_send: Any = None
        self._writer: MessageWriter | None = None
        self._receiver: DirectReceiver | None = None
        self._paused = False
        self._idle_delay = 0.001

    def __enter__(self) -> StoreSender:
        if self.assoc.is_requestor:
            self._pause_reactor()
        self._restore_send = send_directly(self.assoc)
        self._writer = MessageWriter.for_association(self.assoc)
        if self._writer is not None:
            self._receiver = DirectReceiver.install(self.assoc)
        self._idle_delay = self.assoc.dul._run_loop_delay
        if self._receiver is None:
            # The DUL thread sleeps this long between looks at the socket when
            # it has nothing to do; each C-STORE response waits for its next look.
            self.assoc.dul._run_loop_delay = RESPONSE_POLL_SECONDS
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.assoc.dul._run_loop_delay = self._idle_delay
        if self._restore_send is not None:
            self._restore_send()
        if self._paused:
            self.assoc._reactor_checkpoint.set()

    def _pause_reactor(self) -> None:
        self.assoc._reactor_checkpoint.clear()
        deadline = time.monotonic() + PAUSE_TIMEOUT_SECONDS
        while not self.assoc._is_paused:
            if not self.assoc.is_established or time.monotonic() > deadline:
                self.assoc._reactor_checkpoint.set()
                raise SendError(
                    f"the association's reactor did not pause within {PAUSE_TIMEOUT_SECONDS} s"
                )
            time.sleep(0.0001)
        self._paused = True

    def send_file(
        self,
        context_id: int,
        sop_class_uid: str,
        sop_instance_uid: str,
        stream: BinaryIO,
        message_id: int,
        originator: Originator | None = None,
        path: Path | None = None,
    ) -> StoreOutcome:
        """Send the dataset of a stored file unchanged, streamed from ``stream``.

        ``stream`` is a seekable stream of the whole file; its transfer syntax
        must be the one of the presentation context. ``path``, when given, is
        a file with the same bytes, which pynetdicom streams itself over TLS.

        Raises
        ------
        SendError
            If the file has no File Meta Information, or the exchange fails.
        OSError
            If the stream cannot be read.
        """
        offset = _dataset_offset_in(stream, path)
        if self._receiver is not None:
            command = _store_request(message_id, sop_class_uid, sop_instance_uid, originator)
            stream.seek(offset)
            return self._exchange_directly(context_id, message_id, command, data_set_stream=stream)
        request = self._request(context_id, sop_class_uid, sop_instance_uid, message_id)
        if path is not None:
            request._dataset_path = (path, offset)  # streamed by pynetdicom's encoder
        else:
            # NOTE: pynetdicom encodes a data set from memory or from a path, so
            # over TLS an encrypted file is decrypted into memory whole.
            stream.seek(offset)
            request.DataSet = BytesIO(stream.read())
        return self._exchange(request, context_id, originator)

    def send_dataset(
        self,
        context_id: int,
        dataset: Dataset,
        message_id: int,
        originator: Originator | None = None,
    ) -> StoreOutcome:
        """Encode ``dataset`` in the context's transfer syntax and send it."""
        syntax = self._context(context_id).transfer_syntax[0]
        encoded = encode(
            dataset, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
        )
        if encoded is None:
            raise SendError(f"cannot encode {dataset.SOPInstanceUID} in {syntax.name}")
        sop_class_uid, sop_instance_uid = str(dataset.SOPClassUID), str(dataset.SOPInstanceUID)
        if self._receiver is not None:
            command = _store_request(message_id, sop_class_uid, sop_instance_uid, originator)
            return self._exchange_directly(context_id, message_id, command, data_set=encoded)
        request = self._request(context_id, sop_class_uid, sop_instance_uid, message_id)
        request.DataSet = BytesIO(encoded)
        return self._exchange(request, context_id, originator)

    def _context(self, context_id: int) -> Any:
        for context in self.assoc.accepted_contexts:
            if context.context_id == context_id:
                return context
        raise SendError(f"no accepted presentation context {context_id}")

    @staticmethod
    def _request(context_id: int, sop_class: str, sop_instance: str, message_id: int) -> C_STORE:
        request = C_STORE()
        request.MessageID = message_id
        request.AffectedSOPClassUID = sop_class
        request.AffectedSOPInstanceUID = sop_instance
        request.Priority = 0x0002  # low, pynetdicom's default
        return request

    def _exchange_directly(
        self,
        context_id: int,
        message_id: int,
        command_set: bytes,
        data_set: bytes | None = None,
        data_set_stream: BinaryIO | None = None,
    ) -> StoreOutcome:
        """Write a request with the message writer and read its response on this thread."""
        assert self._writer is not None and self._receiver is not None
        if not self.assoc.is_established:
            raise SendError("the association is no longer established")
        failure: str | None = None
        with self._receiver.socket_taken():
            try:
                self._writer.write(context_id, command_set, data_set, data_set_stream)
                response = self._receiver.read_store_response(self.assoc.dimse_timeout)
            except (PartialMessageError, ReceiveError) as exc:
                failure = str(exc)
        if failure is not None:
            if self.assoc.is_established:
                LOGGER.error("C-STORE sub-operation failed (%s); aborting the association", failure)
                self.assoc.abort()
            raise SendError(failure)
        if response.message_id_being_responded_to != message_id:
            self.assoc.abort()
            raise SendError(
                f"C-STORE response to message {response.message_id_being_responded_to}, "
                f"expected {message_id}; association aborted"
            )
        return StoreOutcome(response.status, response.error_comment)

    def _exchange(
        self, request: C_STORE, context_id: int, originator: Originator | None
    ) -> StoreOutcome:
        if originator is not None:
            request.MoveOriginatorApplicationEntityTitle = originator.ae_title
            request.MoveOriginatorMessageID = originator.message_id
        if not self.assoc.is_established:
            raise SendError("the association is no longer established")
        self.assoc.dimse.send_msg(request, context_id)
        _, response = self.assoc.dimse.get_msg(block=True)
        if response is None:
            if self.assoc.is_established:
                LOGGER.error("No C-STORE response within the DIMSE timeout; aborting")
                self.assoc.abort()
            raise SendError("no C-STORE response")
        if not isinstance(response, C_STORE) or not response.is_valid_response:
            self.assoc.abort()
            raise SendError("invalid C-STORE response; association aborted")
        if response.MessageIDBeingRespondedTo != request.MessageID:
            self.assoc.abort()
            raise SendError(
                f"C-STORE response to message {response.MessageIDBeingRespondedTo}, "
                f"expected {request.MessageID}; association aborted"
            )
        comment = getattr(response, "ErrorComment", None)
        return StoreOutcome(int(response.Status or 0), str(comment) if comment else None)


def _store_request(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, originator: Originator | None
) -> bytes:
    if originator is None:
        return encode_store_request(message_id, sop_class_uid, sop_instance_uid)
    return encode_store_request(
        message_id, sop_class_uid, sop_instance_uid, originator.ae_title, originator.message_id
    )


def dataset_offset(path: Path) -> int:
    """Return the byte offset of the dataset that follows the file meta of ``path``.

    Files the archive wrote start with a preamble, ``DICM`` and the group
    length element, so 144 bytes suffice; other files are parsed.

    Raises
    ------
    SendError
        If the file has no preamble and file meta information.
    """
    with open(path, "rb") as stream:
        return _dataset_offset_in(stream, path)


def _dataset_offset_in(stream: BinaryIO, path: Path | None) -> int:
    """Return the dataset offset of the file in ``stream``; see :func:`dataset_offset`.

    A file without the usual 144 bytes is parsed from ``path``, or from
    the stream when there is no path. Only files and bucket objects indexed
    in place need this, because the archive writes every stored file with them.
    """
    stream.seek(0)
    head = stream.read(PREAMBLE_AND_PREFIX + 12)
    if head[128:132] == b"DICM" and head[132:140] == GROUP_LENGTH_ELEMENT:
        (group_length,) = struct.unpack("<I", head[140:144])
        return PREAMBLE_AND_PREFIX + 12 + int(group_length)
    if path is None:
        return _parsed_offset_in(stream)
    try:
        _, offset = split_dataset(path)
    except InvalidDicomError as exc:
        raise SendError(f"{path} has no DICOM file meta information: {exc}") from exc
    return int(offset)


def _parsed_offset_in(stream: BinaryIO) -> int:
    """Return the dataset offset of the file in ``stream`` by parsing its File Meta Information."""
    name = getattr(stream, "name", "the stored file")
    stream.seek(0)
    head = stream.read(META_READ_LIMIT)
    try:
        part10 = split_part10(head)
    except InvalidDatasetError as exc:
        raise SendError(f"{name} has no DICOM file meta information: {exc}") from exc
    # split_part10 also stops where the bytes end, which may be inside the meta.
    if len(head) == META_READ_LIMIT and part10.dataset_offset + 8 > len(head):
        raise SendError(
            f"{name} has File Meta Information longer than {META_READ_LIMIT} bytes, "
            "which the archive does not send"
        )
    return part10.dataset_offset
