"""DICOM JSON text that is stored as it is, without decoding and encoding it again."""

from __future__ import annotations


class EncodedJSON(str):
    """A DICOM JSON object already encoded as text; the index stores it unchanged.

    Worker processes of an indexing task encode headers themselves, so that
    the process writing the index neither receives nor encodes Python objects.
    """
