"""DIMSE status codes the archive returns, with their meaning (PS3.4 Annex B and C, PS3.7 C)."""

from __future__ import annotations

import enum

from pydicom.dataset import Dataset

MAX_ERROR_COMMENT_LENGTH = 64  # Error Comment (0000,0902) is LO


class Status(enum.IntEnum):
    """Status values used by the SCPs."""

    SUCCESS = 0x0000
    PENDING = 0xFF00
    CANCEL = 0xFE00
    # General failures (PS3.7 C)
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    NOT_AUTHORIZED = 0x0124  # Refused: Not authorized
    # C-STORE (PS3.4 B.2.3)
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    WARNING_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xB007
    # C-FIND (PS3.4 C.4.1.1.4)
    FIND_OUT_OF_RESOURCES = 0xA700
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    UNABLE_TO_PROCESS = 0xC000
    # C-MOVE and C-GET (PS3.4 C.4.2.1.5, C.4.3.1.4)
    SUB_OPERATIONS_WARNING = 0xB000
    UNABLE_TO_CALCULATE_MATCHES = 0xA701
    UNABLE_TO_PERFORM_SUB_OPERATIONS = 0xA702
    MOVE_DESTINATION_UNKNOWN = 0xA801


def status_dataset(status: int, comment: str = "") -> Dataset:
    """Return a status Dataset with an Error Comment cut to its maximum length."""
    ds = Dataset()
    ds.Status = int(status)
    if comment:
        ds.ErrorComment = shorten_comment(comment)
    return ds


def shorten_comment(comment: str) -> str:
    """Cut a message to the 64 characters of an LO value, at a word boundary with '...'."""
    if len(comment) <= MAX_ERROR_COMMENT_LENGTH:
        return comment
    cut = comment[: MAX_ERROR_COMMENT_LENGTH - 3]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ;,:") + "..."
