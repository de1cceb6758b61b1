"""The DIMSE server's set-up: copying the supported presentation contexts."""

from __future__ import annotations

import copy

from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom.presentation import build_context

from dicomvault.dimse.server import share_uids_when_copied


def test_copied_contexts_share_uids() -> None:
    share_uids_when_copied()
    context = build_context("1.2.840.10008.5.1.4.1.1.2", [ExplicitVRLittleEndian])

    copied = copy.deepcopy([context])[0]

    assert copied is not context
    assert copied.transfer_syntax == context.transfer_syntax
    assert copied.transfer_syntax[0] is context.transfer_syntax[0]
    assert copied.abstract_syntax == UID("1.2.840.10008.5.1.4.1.1.2")


def test_copied_context_list_is_independent() -> None:
    share_uids_when_copied()
    context = build_context("1.2.840.10008.5.1.4.1.1.2", [ExplicitVRLittleEndian])

    copied = copy.deepcopy(context)
    copied.transfer_syntax = ["1.2.840.10008.1.2"]

    assert context.transfer_syntax == [ExplicitVRLittleEndian]
