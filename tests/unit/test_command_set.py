"""Hand-encoded command sets, checked against pynetdicom's encoding and decoding."""

from __future__ import annotations

from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_FIND_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_FIND, C_STORE
from pynetdicom.dsutils import decode, encode

from dicomvault.dimse.command_set import (
    CommandSetError,
    command_field,
    decode_store_response,
    encode_find_response,
    encode_store_request,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ODD_UID = "1.2.826.0.1.3680043.8.498.1"  # odd length: padded with a NUL
EVEN_UID = "1.2.826.0.1.3680043.8.498.12"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # odd length
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"  # odd length


def pynetdicom_request(originator: bool) -> bytes:
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = CT_IMAGE_STORAGE
    request.AffectedSOPInstanceUID = ODD_UID
    request.Priority = 0x0002
    if originator:
        request.MoveOriginatorApplicationEntityTitle = "MOVESCU"
        request.MoveOriginatorMessageID = 3
    request._dataset_path = ("unused", 0)  # a data set follows
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return bytes(encode(message.command_set, True, True))


def pynetdicom_response(status: int, comment: str | None = None) -> bytes:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = 7
    response.AffectedSOPClassUID = CT_IMAGE_STORAGE
    response.AffectedSOPInstanceUID = EVEN_UID
    response.Status = status
    if comment is not None:
        response.ErrorComment = comment
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    return bytes(encode(message.command_set, True, True))


def pynetdicom_find_response(
    sop_class_uid: str, message_id: int, status: int, identifier: bool
) -> bytes:
    response = C_FIND()
    response.MessageID = message_id
    response.MessageIDBeingRespondedTo = message_id
    response.AffectedSOPClassUID = sop_class_uid
    response.Status = status
    if identifier:
        response.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    message = C_FIND_RSP()
    message.primitive_to_message(response)
    return bytes(encode(message.command_set, True, True))


class TestEncodeFindResponse:
    @pytest.mark.parametrize(
        ("sop_class_uid", "message_id", "status", "identifier"),
        [
            pytest.param(STUDY_ROOT_FIND, 1, 0xFF00, True, id="pending"),
            pytest.param(PATIENT_ROOT_FIND, 65535, 0xFF01, True, id="pending_warning"),
            pytest.param(STUDY_ROOT_FIND, 3, 0x0000, False, id="success"),
            pytest.param(EVEN_UID, 3, 0xFE00, False, id="cancel_even_uid"),
        ],
    )
    def test_same_bytes_as_pynetdicom(
        self, sop_class_uid: str, message_id: int, status: int, identifier: bool
    ) -> None:
        ours = encode_find_response(message_id, sop_class_uid, status, identifier)

        assert ours == pynetdicom_find_response(sop_class_uid, message_id, status, identifier)

    def test_readable_as_a_dataset(self) -> None:
        encoded = encode_find_response(5, STUDY_ROOT_FIND, 0xFF00, has_identifier=True)

        command = decode(BytesIO(encoded), True, True)

        assert command.CommandField == 0x8020
        assert command.MessageIDBeingRespondedTo == 5
        assert command.AffectedSOPClassUID == STUDY_ROOT_FIND
        assert command.Status == 0xFF00
        assert command.CommandDataSetType != 0x0101
        assert command.CommandGroupLength == len(encoded) - 12


class TestEncodeStoreRequest:
    @pytest.mark.parametrize("originator", [False, True])
    def test_same_bytes_as_pynetdicom(self, originator: bool) -> None:
        if originator:
            ours = encode_store_request(7, CT_IMAGE_STORAGE, ODD_UID, "MOVESCU", 3)
        else:
            ours = encode_store_request(7, CT_IMAGE_STORAGE, ODD_UID)

        assert ours == pynetdicom_request(originator)

    def test_readable_as_a_dataset(self) -> None:
        encoded = encode_store_request(9, CT_IMAGE_STORAGE, EVEN_UID, "ABC", 2)

        command = decode(BytesIO(encoded), True, True)

        assert command.CommandField == 0x0001
        assert command.MessageID == 9
        assert command.AffectedSOPInstanceUID == EVEN_UID
        assert command.MoveOriginatorApplicationEntityTitle == "ABC"
        assert command.CommandGroupLength == len(encoded) - 12  # after the group length element


class TestDecodeStoreResponse:
    def test_success(self) -> None:
        response = decode_store_response(pynetdicom_response(0x0000))

        assert response.message_id_being_responded_to == 7
        assert response.status == 0x0000
        assert response.error_comment is None
        assert not response.has_data_set

    def test_failure_with_error_comment(self) -> None:
        response = decode_store_response(pynetdicom_response(0xA700, "Disk full"))

        assert response.status == 0xA700
        assert response.error_comment == "Disk full"

    def test_command_field_of_a_request(self) -> None:
        assert command_field(pynetdicom_request(False)) == (0x0001, True)

    def test_request_is_not_a_response(self) -> None:
        with pytest.raises(CommandSetError, match="not a C-STORE response"):
            decode_store_response(pynetdicom_request(False))

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            (b"\x00\x00\x00", "inside an element header"),
            (b"\x08\x00\x16\x00\x02\x00\x00\x00ab", "outside group 0000"),
            (b"\x00\x00\x00\x09\xff\x00\x00\x00", "longer than the command set"),
            (b"\x00\x00\x00\x01\x02\x00\x00\x00\x01\x80", "no valid \\(0000,0120\\)"),
        ],
    )
    def test_malformed(self, data: bytes, message: str) -> None:
        with pytest.raises(CommandSetError, match=message):
            decode_store_response(data)
