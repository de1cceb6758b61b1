"""Resource limits of the DIMSE service: associations per AE title, PDU and data set sizes.

pynetdicom 3.0 limits the number of concurrent associations
(``dimse.max_associations``) itself. This module adds what it leaves open:

- at most ``dimse.max_associations_per_ae`` associations of one calling AE
  title, rejected like the global limit (PS3.8 9.3.4);
- a PDU longer than the archive accepts is not read: the association is
  aborted as soon as its header arrives (PS3.8 9.3.8);
- a C-STORE data set larger than ``dimse.max_dataset_size`` is discarded
  as it arrives, and the request fails with 0xA700 Out of Resources.
"""

from __future__ import annotations

import io
import logging
import struct
import threading
from typing import Any

from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import P_DATA

from dicomvault.dimse.access_control import AccessControl

LOGGER = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, reason/diag.) of PS3.8 Table 9-21: rejected-transient,
# DICOM UL service-provider (presentation related function), local-limit-exceeded.
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)

PDU_TYPE_NAMES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}
A_ASSOCIATE_RQ_TYPE = 0x01
P_DATA_TF = 0x04
# PDUs only an association requestor receives. The archive's listener is the acceptor,
# and pynetdicom 3.0's logging handlers raise on some malformed ones of these.
REQUESTOR_ONLY_PDU_TYPES = frozenset({0x02, 0x03})
# Maximum length of every PDU other than P-DATA-TF, which dimse.max_pdu_size
# limits. An A-ASSOCIATE-RQ proposing 128 presentation contexts with a dozen
# transfer syntaxes each is about 45 KiB (an estimate), so 1 MiB leaves room
# for large user identity items.
MAX_ASSOCIATION_PDU_LENGTH = 1024 * 1024
# A-ABORT source "DICOM UL service-provider" and reason "invalid-PDU-parameter value"
# (PS3.8 Table 9-26).
ABORT_SOURCE_PROVIDER = 0x02
ABORT_INVALID_PARAMETER_VALUE = 0x06
# The logger of pynetdicom.utils.decode_bytes, which decodes AE titles and UIDs.
PYNETDICOM_TEXT_LOGGER = "pynetdicom.utils"
# A DIMSE command set contains a few short elements, so a longer one is not a command.
MAX_COMMAND_SET_LENGTH = 64 * 1024


class DiscardedDataSet(io.BytesIO):
    """The data set of a DIMSE message that exceeded ``dimse.max_dataset_size``.

    It keeps no bytes, only the count of those that arrived, so the
    message can still complete and get a failure status in response.
    """

    def __init__(self, received: int, limit: int) -> None:
        super().__init__()
        self.received = received
        self.limit = limit

    def write(self, data: Any) -> int:
        """Count ``data`` and drop it."""
        count = len(data)
        self.received += count
        return count


class AssociationsPerAE:
    """Rejects a calling AE title's association beyond ``limit`` concurrent ones.

    Bind :meth:`on_requested` to ``evt.EVT_REQUESTED`` after the access
    control, which sets the requestor's AE title. An admitted association
    counts until its thread ends.

    Parameters
    ----------
    limit : int
        Maximum number of concurrent associations per calling AE title;
        0 sets no limit of its own (``dimse.max_associations`` still applies).
    access : AccessControl
        Records the rejection, so that the server's rejection log and
        audit event give its reason.
    """

    def __init__(self, limit: int, access: AccessControl) -> None:
        self.limit = limit
        self.access = access
        self._lock = threading.Lock()
        self._admitted: dict[str, list[Any]] = {}

    def on_requested(self, event: Any) -> None:
        """Admit or reject an association request (bound to ``evt.EVT_REQUESTED``)."""
        assoc = event.assoc
        if assoc.is_rejected or assoc.is_aborted:
            return  # the access control rejected it already
        ae_title = str(assoc.requestor.ae_title)
        with self._lock:
            admitted = [other for other in self._admitted.get(ae_title, []) if _is_open(other)]
            over_limit = bool(self.limit) and len(admitted) >= self.limit
            if not over_limit:
                admitted.append(assoc)
            self._admitted[ae_title] = admitted
            if not admitted:
                del self._admitted[ae_title]
        if over_limit:
            reason = (
                f"{len(admitted)} associations of {ae_title} are open, the limit set by "
                "dimse.max_associations_per_ae"
            )
            self.access.reject(assoc, reason, REJECT_LOCAL_LIMIT)

    def open_associations(self, ae_title: str) -> int:
        """Count the admitted associations of ``ae_title`` that are still open."""
        with self._lock:
            return sum(1 for assoc in self._admitted.get(ae_title, []) if _is_open(assoc))

    def set_limit(self, limit: int) -> None:
        """Apply ``limit`` to the next association requests."""
        self.limit = limit


def limit_pdu_length(assoc: Any, max_pdu_size: int) -> None:
    """Abort the association when the peer announces a PDU longer than the archive accepts.

    A P-DATA-TF PDU may be ``max_pdu_size`` bytes long (the Maximum Length
    the archive sent, PS3.8 D.1; 0 sets no limit), any other PDU
    ``MAX_ASSOCIATION_PDU_LENGTH``. The check runs on the PDU header,
    before the rest is read, so the bytes of a longer PDU are never held.
    The peer gets an A-ABORT (service-provider, invalid-PDU-parameter
    value) and the connection is closed.

    Replaces the DUL's PDU read of pynetdicom 3.0, keeping its events:
    Evt17 when the connection closes or times out during a read, Evt19 for
    an unknown PDU type or a PDU that cannot be decoded. An A-ASSOCIATE-AC
    or A-ASSOCIATE-RJ PDU is Evt19 too, because the archive is the acceptor.
    """
    dul = assoc.dul

    def read_pdu() -> None:
        transport = dul.socket
        try:
            header = transport.recv(6)
        except OSError as exc:  # TimeoutError is an OSError
            _connection_lost(assoc, "before a PDU header arrived", exc)
            return
        if len(header) < 6:
            dul.event_queue.put("Evt17")
            return

        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type not in PDU_TYPE_NAMES:
            LOGGER.warning(
                "Unknown PDU type 0x%02X from %s; aborting the association", pdu_type, _peer(assoc)
            )
            dul.event_queue.put("Evt19")
            return
        if pdu_type in REQUESTOR_ONLY_PDU_TYPES:
            LOGGER.warning(
                "Unexpected %s PDU from %s, which only an association requestor receives; "
                "aborting the association",
                PDU_TYPE_NAMES[pdu_type],
                _peer(assoc),
            )
            dul.event_queue.put("Evt19")
            return
        limit, setting = (max_pdu_size, "dimse.max_pdu_size")
        if pdu_type != P_DATA_TF:
            limit, setting = (MAX_ASSOCIATION_PDU_LENGTH, "the archive's maximum")
        if limit and length > limit:
            LOGGER.warning(
                "%s from %s announced a length of %d bytes, more than %d (%s); "
                "aborting the association",
                PDU_TYPE_NAMES[pdu_type],
                _peer(assoc),
                length,
                limit,
                setting,
            )
            _abort_invalid_pdu(dul)
            return

        try:
            body = transport.recv(length)
        except OSError as exc:
            _connection_lost(assoc, f"during a {PDU_TYPE_NAMES[pdu_type]} PDU", exc)
            return
        if len(body) != length:
            LOGGER.warning(
                "Connection from %s closed after %d of the %d bytes of a %s PDU",
                _peer(assoc),
                len(body),
                length,
                PDU_TYPE_NAMES[pdu_type],
            )
            dul.event_queue.put("Evt17")
            return

        try:
            if pdu_type == A_ASSOCIATE_RQ_TYPE:
                _check_association_rq(header + body)
            pdu, event = dul._decode_pdu(header + body)
        except Exception as exc:  # pynetdicom raises many kinds for malformed PDUs
            LOGGER.warning(
                "Failed to decode a %s PDU from %s; aborting the association: %s",
                PDU_TYPE_NAMES[pdu_type],
                _peer(assoc),
                exc,
            )
            dul.event_queue.put("Evt19")
            return
        dul.event_queue.put(event)
        dul._recv_pdu.put(pdu)

    dul._read_pdu_data = read_pdu


def end_unrequested_association(event: Any) -> None:
    """End an acceptor's association whose connection closed before an A-ASSOCIATE-RQ arrived.

    Bind to ``evt.EVT_FSM_TRANSITION``. pynetdicom 3.0 waits ``dimse.acse_timeout``
    for the request even when the DUL aborted a malformed PDU or the peer
    closed the connection, and the waiting association counts towards
    ``dimse.max_associations``. So a few dozen malformed connections would
    block every new association for that long. On the move to Sta1 (idle,
    connection closed) this wakes the association with no request, which
    pynetdicom takes as the timeout and ends at once.
    """
    if event.next_state != "Sta1":
        return
    assoc = event.assoc
    if not assoc.is_acceptor or assoc.requestor.primitive is not None:
        return
    # receive_pdu returns None on a timeout, so None ends the wait the same way.
    assoc.dul.to_user_queue.put(None)


def limit_dataset_size(assoc: Any, max_dataset_size: int) -> None:
    """Discard a received data set beyond ``max_dataset_size`` bytes as it arrives.

    The message still completes. Its data set is then a
    :class:`DiscardedDataSet`, for which the C-STORE handler returns 0xA700.
    A command set longer than ``MAX_COMMAND_SET_LENGTH``, or one that
    pynetdicom fails to decode, aborts the association.
    """
    dimse = assoc.dimse
    receive = dimse.receive_primitive

    def receive_primitive(primitive: Any) -> None:
        if isinstance(primitive, P_DATA) and _data_before_command_set(
            dimse.message, primitive.presentation_data_value_list
        ):
            # pynetdicom would log tracebacks for it, then abort.
            LOGGER.warning(
                "DIMSE data set fragment from %s before a complete command set; "
                "aborting the association",
                _peer(assoc),
            )
            dimse.message = None
            assoc.dul.event_queue.put("Evt19")
            return
        try:
            receive(primitive)
        except Exception as exc:  # pynetdicom raises many kinds for a malformed command set
            # Raised inside the state machine's action, the error would end the
            # DUL thread with a traceback; an abort ends the association cleanly.
            LOGGER.warning(
                "Failed to decode a DIMSE message from %s; aborting the association: %r",
                _peer(assoc),
                exc,
            )
            dimse.message = None
            assoc.dul.event_queue.put("Evt19")
            return
        message = dimse.message
        if message is None or not isinstance(primitive, P_DATA):
            return  # the message is complete, or there is none

        command_length = message.encoded_command_set.getbuffer().nbytes
        if command_length > MAX_COMMAND_SET_LENGTH:
            LOGGER.warning(
                "DIMSE command set from %s exceeds %d bytes; aborting the association",
                _peer(assoc),
                MAX_COMMAND_SET_LENGTH,
            )
            dimse.message = None
            assoc.dul.event_queue.put("Evt19")
            return
        data_set = message.data_set
        if isinstance(data_set, DiscardedDataSet) or not isinstance(data_set, io.BytesIO):
            return
        received = data_set.getbuffer().nbytes
        if received > max_dataset_size:
            LOGGER.warning(
                "Data set from %s exceeds %d bytes (dimse.max_dataset_size); "
                "discarding the rest as it arrives",
                _peer(assoc),
                max_dataset_size,
            )
            message.data_set = DiscardedDataSet(received, max_dataset_size)

    dimse.receive_primitive = receive_primitive


def _data_before_command_set(message: Any, values: list[tuple[int, bytes]]) -> bool:
    """Return whether a data set fragment in ``values`` comes before the command set ends.

    ``message`` is the DIMSE message being received, None before its first
    fragment; its class changes from the base DIMSEMessage once its command
    set is complete. The control header's bit 0 marks a command fragment and
    bit 1 the last one (PS3.8 E.2).
    """
    command_complete = message is not None and type(message) is not DIMSEMessage
    for _, value in values:
        if not value:
            return False  # pynetdicom rejects an empty value itself
        control = value[0]
        if control & 0x01:
            command_complete = bool(control & 0x02)
        elif not command_complete:
            return True
    return False


def _check_association_rq(data: bytes) -> None:
    """Raise ValueError if the A-ASSOCIATE-RQ in `data` has no User Information item.

    PS3.8 9.3.2 requires the item, and pynetdicom 3.0's logging handler raises
    AttributeError (with a traceback in the log) on a request without it.
    The PDU is decoded here without pynetdicom's events, which run on
    :meth:`DULServiceProvider._decode_pdu`.
    """
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(bytes(data))
    if pdu.user_information is None:
        raise ValueError("the A-ASSOCIATE-RQ has no User Information item")


class TextDecodeErrorFilter(logging.Filter):
    """Logging filter that turns pynetdicom's text decoding tracebacks into one-line warnings.

    pynetdicom 3.0 logs every failed codec with its traceback when an AE
    title or UID in a received PDU is not ASCII. The peer caused it and the
    archive survives it (the decoding falls back to other codecs, or the PDU
    is rejected as undecodable), so the traceback is dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop the traceback of a UnicodeError record and lower it to WARNING."""
        if record.exc_info and isinstance(record.exc_info[1], UnicodeError):
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.WARNING
            record.levelname = logging.getLevelName(logging.WARNING)
        return True


_TEXT_DECODE_ERROR_FILTER = TextDecodeErrorFilter()


def shorten_text_decode_errors() -> None:
    """Install :class:`TextDecodeErrorFilter` on pynetdicom's logger; idempotent."""
    logging.getLogger(PYNETDICOM_TEXT_LOGGER).addFilter(_TEXT_DECODE_ERROR_FILTER)


def _abort_invalid_pdu(dul: Any) -> None:
    """Send an A-ABORT and close the connection, which the state machine takes as Evt17."""
    pdu = A_ABORT_RQ()
    pdu.source = ABORT_SOURCE_PROVIDER
    pdu.reason_diagnostic = ABORT_INVALID_PARAMETER_VALUE
    try:
        dul.socket.send(pdu.encode())
    except OSError as exc:
        LOGGER.debug("Cannot send the A-ABORT: %s", exc)
    dul.socket.close()


def _connection_lost(assoc: Any, when: str, exc: OSError) -> None:
    reason = "timed out" if isinstance(exc, TimeoutError) else "failed"
    LOGGER.warning("Read from %s %s %s: %s", _peer(assoc), reason, when, exc or type(exc).__name__)
    assoc.dul.event_queue.put("Evt17")


def _is_open(assoc: Any) -> bool:
    return bool(assoc.is_alive()) and not (assoc.is_rejected or assoc.is_released)


def _peer(assoc: Any) -> str:
    requestor = assoc.requestor
    ae_title = requestor.ae_title or "(no AE title yet)"
    return f"{ae_title} @ {requestor.address}:{requestor.port}"
