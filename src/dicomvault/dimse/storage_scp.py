"""C-STORE SCP: receive an instance, make it durable, index it, return the status."""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset

from dicomvault.archive import (
    Archive,
    DuplicateInstanceError,
    IndexUnavailableError,
    InstanceMismatchError,
    InvalidDatasetError,
    StorageError,
    StorageFullError,
)
from dicomvault.dicom.header import MissingAttributeError
from dicomvault.dimse.access_control import AccessControl
from dicomvault.dimse.limits import DiscardedDataSet
from dicomvault.dimse.status import Status, status_dataset
from dicomvault.permissions import Permission

LOGGER = logging.getLogger(__name__)

# Domain error -> status, most specific first (PS3.4 B.2.3, PS3.7 C).
STORE_FAILURES: tuple[tuple[type[Exception], Status], ...] = (
    (MissingAttributeError, Status.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    (InstanceMismatchError, Status.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    (InvalidDatasetError, Status.CANNOT_UNDERSTAND),
    (DuplicateInstanceError, Status.DUPLICATE_SOP_INSTANCE),
    (StorageFullError, Status.OUT_OF_RESOURCES),
    (StorageError, Status.PROCESSING_FAILURE),
    (IndexUnavailableError, Status.PROCESSING_FAILURE),
)


def handle_store(event: Any, archive: Archive, access: AccessControl) -> Dataset:
    """Handle a C-STORE request (bound to ``evt.EVT_C_STORE``).

    Notes
    -----
    Statuses returned:

    - 0x0000 Success: the file is durable and indexed.
    - 0xB007 Warning: stored, but the request's SOP Class UID differs from
      the dataset's.
    - 0xA900 Failure: Study, Series, SOP Instance or SOP Class UID missing,
      or the request's SOP Instance UID differs from the dataset's.
    - 0xC000 Failure: the dataset cannot be parsed or is truncated.
    - 0x0111 Failure: the instance exists and the duplicate policy is reject.
    - 0xA700 Failure: no space left in storage, or the data set is larger
      than ``dimse.max_dataset_size``; its bytes were discarded as they
      arrived.
    - 0x0110 Failure: storage or index error.
    - 0x0124 Refused: Not authorized (PS3.7 C.5): the calling AE title lacks
      the store permission; the received data set is neither parsed nor stored.

    Every failure carries an Error Comment and leaves nothing stored.
    """
    refusal = access.check_permission(event.assoc, Permission.STORE, "C-STORE")
    if refusal is not None:
        return status_dataset(Status.NOT_AUTHORIZED, refusal)

    request = event.request
    calling_ae = event.assoc.requestor.ae_title
    sop_instance_uid = str(request.AffectedSOPInstanceUID or "")
    if isinstance(request.DataSet, DiscardedDataSet):
        return _too_large(request.DataSet, calling_ae, sop_instance_uid)

    try:
        result = archive.store(
            dataset=request.DataSet.getvalue(),
            transfer_syntax_uid=str(event.context.transfer_syntax),
            sop_class_uid=str(request.AffectedSOPClassUID or ""),
            sop_instance_uid=sop_instance_uid,
            source_ae_title=calling_ae,
            service="C-STORE",
        )
    except Exception as exc:
        return _failure(exc, calling_ae, sop_instance_uid)

    for warning in result.warnings:
        LOGGER.warning(
            "Stored %s from %s with a warning: %s", sop_instance_uid, calling_ae, warning
        )
    if result.sop_class_mismatch:
        return status_dataset(
            Status.WARNING_DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "SOP Class UID of request and dataset differ",
        )
    return status_dataset(Status.SUCCESS)


def _too_large(data_set: DiscardedDataSet, calling_ae: str, sop_instance_uid: str) -> Dataset:
    LOGGER.error(
        "C-STORE of %s from %s failed with 0x%04X: the data set of %d bytes exceeds "
        "dimse.max_dataset_size (%d bytes)",
        sop_instance_uid,
        calling_ae,
        Status.OUT_OF_RESOURCES,
        data_set.received,
        data_set.limit,
    )
    return status_dataset(
        Status.OUT_OF_RESOURCES,
        f"Data set exceeds dimse.max_dataset_size ({data_set.limit} bytes)",
    )


def _failure(exc: Exception, calling_ae: str, sop_instance_uid: str) -> Dataset:
    for error_type, status in STORE_FAILURES:
        if isinstance(exc, error_type):
            message = _message(exc)
            LOGGER.error(
                "C-STORE of %s from %s failed with 0x%04X: %s",
                sop_instance_uid,
                calling_ae,
                status,
                message,
            )
            return status_dataset(status, message)
    LOGGER.exception("C-STORE of %s from %s failed unexpectedly", sop_instance_uid, calling_ae)
    return status_dataset(Status.PROCESSING_FAILURE, f"Internal error: {type(exc).__name__}")


def _message(exc: Exception) -> str:
    if isinstance(exc, DuplicateInstanceError):
        return "Duplicate SOP Instance: already stored, duplicates are rejected"
    return str(exc)
