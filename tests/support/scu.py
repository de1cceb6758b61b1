"""A pynetdicom Storage SCU that sends a file's dataset bytes unchanged.

storescu parses every file before sending and skips the ones it cannot read,
so broken files and byte-for-byte checks go through pynetdicom instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config

from tests.support.network import LOOPBACK

ACSE_TIMEOUT_SECONDS = 30
DIMSE_TIMEOUT_SECONDS = 60
NETWORK_TIMEOUT_SECONDS = 60


@dataclasses.dataclass
class StoreResponse:
    """Status and Error Comment of a C-STORE response."""

    status: int
    error_comment: str | None


@contextmanager
def _send_files_unchanged() -> Iterator[None]:
    # With this pynetdicom option, send_c_store(path) streams the bytes that
    # follow the File Meta Information as they are. Without it pynetdicom
    # decodes the file with pydicom and encodes it again.
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def send_file_unchanged(
    port: int,
    path: Path,
    called_ae: str,
    calling_ae: str = "RAWSCU",
) -> StoreResponse:
    """Send the dataset of `path` in one C-STORE, in the file's own transfer syntax.

    The SOP Class, SOP Instance and Transfer Syntax UIDs of the request come
    from the File Meta Information, so the dataset itself may be broken.

    Raises
    ------
    AssertionError
        If the association is not accepted or no C-STORE response arrives.
    """
    meta = read_file_meta_info(path)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ACSE_TIMEOUT_SECONDS
    ae.dimse_timeout = DIMSE_TIMEOUT_SECONDS
    ae.network_timeout = NETWORK_TIMEOUT_SECONDS
    ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])

    with _send_files_unchanged():
        assoc = ae.associate(LOOPBACK, port, ae_title=called_ae)
        if not assoc.is_established:
            raise AssertionError(
                f"Association to {called_ae} @ {LOOPBACK}:{port} was not established "
                f"for {meta.MediaStorageSOPClassUID.name} in {meta.TransferSyntaxUID.name}"
            )
        try:
            rsp = assoc.send_c_store(path)
        finally:
            if assoc.is_established:
                assoc.release()

    if "Status" not in rsp:
        raise AssertionError(
            f"No C-STORE response for {path.name}: the association was aborted or timed out"
        )
    return StoreResponse(int(rsp.Status), rsp.get("ErrorComment"))
