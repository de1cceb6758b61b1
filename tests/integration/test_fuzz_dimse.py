"""Fuzzing of `dicomvault serve`: malformed PDUs, C-STORE data sets and STOW-RS bodies.

Hypothesis generates the inputs from a fixed seed (``derandomize=True``), so a
CI run sends the same examples every time and stays short. Set
DICOMVAULT_FUZZ_EXAMPLES to a larger count for a longer run; see docs/fuzzing.md.

After every example the server must still run, return no traceback in its
log, answer a C-ECHO and store a valid instance.
"""

from __future__ import annotations

import io
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE
from pynetdicom.status import code_to_category

from tests.support.corpus import TEST_UID_PREFIX, dataset_offset, write_instance
from tests.support.datasets import encode_dataset, make_instance
from tests.support.dcmtk import echoscu, storescu
from tests.support.network import LOOPBACK
from tests.support.scu import send_file_unchanged
from tests.support.server import DicomvaultServer, ServerFactory

pytestmark = pytest.mark.integration

FUZZ_EXAMPLES = int(os.environ.get("DICOMVAULT_FUZZ_EXAMPLES", "30"))
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# How long a fuzzing client waits for the server's reply before it closes the socket.
# The server responds to a malformed PDU at once, so this only bounds PDUs whose
# declared length is longer than the bytes sent.
REPLY_WAIT_SECONDS = 0.2
SOCKET_TIMEOUT_SECONDS = 10
HTTP_TIMEOUT_SECONDS = 30

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
SUCCESS = 0x0000


@pytest.fixture(scope="module")
def index_backend() -> str:
    """SQLite only: the PDU and data set parsing under test runs before the index."""
    return "sqlite"


@pytest.fixture(scope="module")
def server(start_module_server: ServerFactory) -> DicomvaultServer:
    return start_module_server()


# PDU encoding (PS3.8 9.3), written by hand so that any field can be wrong.


def encode_pdu(pdu_type: int, body: bytes, length: int | None = None) -> bytes:
    """Return a PDU: type, reserved byte, 4-byte big-endian length, then `body`.

    `length` replaces the true length of `body`, so that the header can lie.
    """
    declared = len(body) if length is None else length
    return struct.pack(">BBI", pdu_type, 0, declared) + body


def encode_item(item_type: int, value: bytes, length: int | None = None) -> bytes:
    """Return a variable item or sub-item: type, reserved byte, 2-byte length, value."""
    declared = len(value) if length is None else length
    return struct.pack(">BBH", item_type, 0, declared) + value


def association_items(abstract_syntax: str = VERIFICATION_SOP_CLASS) -> list[bytes]:
    """Return the variable items of an A-ASSOCIATE-RQ proposing one presentation context."""
    presentation_context = (
        bytes([1, 0, 0, 0])
        + encode_item(0x30, abstract_syntax.encode())
        + encode_item(0x40, ImplicitVRLittleEndian.encode())
    )
    maximum_length = encode_item(0x51, struct.pack(">I", 16384))
    return [
        encode_item(0x10, APPLICATION_CONTEXT.encode()),
        encode_item(0x20, presentation_context),
        encode_item(0x50, maximum_length),
    ]


def association_rq_body(called_ae: str, items: bytes) -> bytes:
    """Return the body of an A-ASSOCIATE-RQ: version, AE titles, reserved bytes, `items`."""
    return (
        struct.pack(">HH", 1, 0)
        + called_ae.encode().ljust(16)
        + b"FUZZSCU".ljust(16)
        + bytes(32)
        + items
    )


def valid_association_rq(called_ae: str) -> bytes:
    return encode_pdu(0x01, association_rq_body(called_ae, b"".join(association_items())))


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """Read one whole PDU from `sock` and return its type and body."""
    header = _read_exactly(sock, 6)
    pdu_type, _, length = struct.unpack(">BBI", header)
    return pdu_type, _read_exactly(sock, length)


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def drain(sock: socket.socket) -> None:
    """Read what the server sends until it closes or REPLY_WAIT_SECONDS pass."""
    sock.settimeout(REPLY_WAIT_SECONDS)
    try:
        while sock.recv(65536):
            pass
    except (TimeoutError, ConnectionError):
        pass


def send_raw(port: int, chunks: list[bytes], *, associate_first: str | None = None) -> None:
    """Connect to 127.0.0.1:`port`, send `chunks`, read the reply, then close.

    With `associate_first` (the called AE title), a valid A-ASSOCIATE-RQ goes
    first and the chunks follow only once the A-ASSOCIATE-AC arrives.
    """
    with socket.create_connection((LOOPBACK, port), timeout=SOCKET_TIMEOUT_SECONDS) as sock:
        if associate_first is not None:
            sock.sendall(valid_association_rq(associate_first))
            pdu_type, _ = read_pdu(sock)
            assert pdu_type == 0x02, f"expected an A-ASSOCIATE-AC, got PDU type 0x{pdu_type:02X}"
        try:
            for chunk in chunks:
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            # The server aborted the association before all bytes were sent.
            return
        drain(sock)


# Hypothesis strategies for malformed PDUs.

PDU_TYPES = st.one_of(
    st.sampled_from([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07]), st.integers(0, 255)
)


@st.composite
def random_pdus(draw: st.DrawFn) -> bytes:
    """A PDU of any type whose declared length may differ from its body."""
    body = draw(st.binary(max_size=256))
    length = draw(
        st.one_of(
            st.none(),
            st.integers(0, len(body) + 16),
            st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF]),
        )
    )
    return encode_pdu(draw(PDU_TYPES), body, length)


@st.composite
def truncated_association_rqs(draw: st.DrawFn, called_ae: str) -> bytes:
    """An A-ASSOCIATE-RQ with one variable item cut, dropped, random or of false length."""
    items = association_items()
    index = draw(st.integers(0, len(items) - 1))
    item = items[index]
    mutation = draw(st.sampled_from(["truncate", "lie", "drop", "garbage"]))
    if mutation == "truncate":
        items[index] = item[: draw(st.integers(0, len(item) - 1))]
    elif mutation == "lie":
        items[index] = encode_item(item[0], item[4:], draw(st.integers(0, 0xFFFF)))
    elif mutation == "drop":
        del items[index]
    else:
        items[index] = draw(st.binary(max_size=64))
    body = association_rq_body(called_ae, b"".join(items))
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]
    length = draw(st.one_of(st.none(), st.integers(0, len(body) + 8)))
    return encode_pdu(0x01, body, length)


@st.composite
def broken_p_data_tfs(draw: st.DrawFn) -> bytes:
    """A P-DATA-TF whose PDVs have lying lengths, unknown context IDs or random fragments."""
    pdvs = b""
    for _ in range(draw(st.integers(0, 3))):
        fragment = draw(st.binary(max_size=128))
        context_id = draw(st.sampled_from([1, 3, 0, 255]))
        # Message control header: bit 0 set for a command, bit 1 set for the last fragment.
        control = draw(st.integers(0, 255))
        value = bytes([context_id, control]) + fragment
        length = draw(st.one_of(st.none(), st.integers(0, len(value) + 16)))
        declared = len(value) if length is None else length
        pdvs += struct.pack(">I", declared) + value
    length = draw(st.one_of(st.none(), st.integers(0, len(pdvs) + 16)))
    return encode_pdu(0x04, pdvs, length)


# A traceback the server logs for a known pynetdicom 3.0 race, which the peer can
# cause and the server survives. An invalid PDU arrives after the A-ASSOCIATE-RQ
# and before the response, so the DUL is in Sta13 when the A-ASSOCIATE-AC
# primitive (Evt7) comes. Its thread then ends with this error, and the
# association is aborted as it should be.
KNOWN_TRACEBACK_ENDINGS = ("InvalidEventError: Invalid event 'Evt7' for the current state 'Sta13'",)


def unexpected_tracebacks(log: str) -> list[str]:
    """Return the tracebacks in `log` other than those of KNOWN_TRACEBACK_ENDINGS."""
    tracebacks = []
    for block in log.split("Traceback (most recent call last):")[1:]:
        # A traceback ends at the first line that is not indented.
        lines = block.splitlines()[1:]
        ending = next((line for line in lines if not line.startswith(" ")), "")
        if not ending.endswith(KNOWN_TRACEBACK_ENDINGS):
            tracebacks.append(ending)
    return tracebacks


def valid_instance() -> Dataset:
    """Return a new MR instance that pynetdicom sends in Explicit VR Little Endian."""
    ds = make_instance()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def check_server_healthy(server: DicomvaultServer) -> None:
    """Assert that the server runs, logged no traceback, responds to C-ECHO and stores."""
    assert server.returncode is None, f"the server exited.\n{server.describe()}"
    assert unexpected_tracebacks(server.log_text()) == [], server.describe()

    ae = AE(ae_title="FUZZCHECK")
    ae.acse_timeout = SOCKET_TIMEOUT_SECONDS
    ae.dimse_timeout = SOCKET_TIMEOUT_SECONDS
    ae.network_timeout = SOCKET_TIMEOUT_SECONDS
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate(LOOPBACK, server.port, ae_title=server.ae_title)
    assert assoc.is_established, f"association after fuzzing failed.\n{server.describe()}"
    try:
        echo = assoc.send_c_echo()
        store = assoc.send_c_store(valid_instance())
    finally:
        assoc.release()
    assert echo.get("Status") == SUCCESS, f"C-ECHO response {echo}.\n{server.describe()}"
    assert store.get("Status") == SUCCESS, f"C-STORE response {store}.\n{server.describe()}"


@pytest.fixture
def healthy_afterwards(server: DicomvaultServer, tmp_path: Path) -> Iterator[DicomvaultServer]:
    """Yield the server, then check it with the DCMTK tools once the test is over."""
    yield server
    check_server_healthy(server)
    echo = echoscu(server.port, server.ae_title)
    assert echo.returncode == 0, echo.output
    path = write_instance(tmp_path / "after-fuzzing.dcm", make_instance())
    stored = storescu(server.port, [path], server.ae_title)
    assert stored.results[str(path)].status == SUCCESS, stored.run.output


class TestMalformedPdus:
    @FUZZ_SETTINGS
    @given(pdus=st.lists(random_pdus(), min_size=1, max_size=4))
    def test_random_pdu_sequence(
        self, pdus: list[bytes], healthy_afterwards: DicomvaultServer
    ) -> None:
        send_raw(healthy_afterwards.port, pdus)
        check_server_healthy(healthy_afterwards)

    @FUZZ_SETTINGS
    @given(data=st.data())
    def test_truncated_association_rq(
        self, data: st.DataObject, healthy_afterwards: DicomvaultServer
    ) -> None:
        pdu = data.draw(truncated_association_rqs(healthy_afterwards.ae_title))
        send_raw(healthy_afterwards.port, [pdu])
        check_server_healthy(healthy_afterwards)

    @FUZZ_SETTINGS
    @given(pdus=st.lists(broken_p_data_tfs(), min_size=1, max_size=3))
    def test_broken_pdvs_after_association(
        self, pdus: list[bytes], healthy_afterwards: DicomvaultServer
    ) -> None:
        send_raw(healthy_afterwards.port, pdus, associate_first=healthy_afterwards.ae_title)
        check_server_healthy(healthy_afterwards)

    @FUZZ_SETTINGS
    @given(garbage=st.binary(min_size=1, max_size=512))
    def test_garbage_after_association(
        self, garbage: bytes, healthy_afterwards: DicomvaultServer
    ) -> None:
        send_raw(healthy_afterwards.port, [garbage], associate_first=healthy_afterwards.ae_title)
        check_server_healthy(healthy_afterwards)


# Malformed data sets through C-STORE and STOW-RS.


def fixed_length_uid(number: int) -> str:
    """Return a UID of constant length, so that the encoded instances depend only on the draws."""
    return f"{TEST_UID_PREFIX}1{number:019d}"


@st.composite
def generated_instances(draw: st.DrawFn) -> Dataset:
    """A small MR instance whose UIDs Hypothesis draws."""
    number = draw(st.integers(0, 10**15))
    return make_instance(
        SOPInstanceUID=fixed_length_uid(number),
        SeriesInstanceUID=fixed_length_uid(number + 1),
        StudyInstanceUID=fixed_length_uid(number + 2),
    )


@st.composite
def broken_datasets(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid encoded instance with bytes flipped, cut, or a lying element inserted.

    Returns the SOP Instance UID of the instance before the change, and the bytes.
    """
    transfer_syntax = draw(st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    ds = draw(generated_instances())
    data = bytearray(encode_dataset(ds, transfer_syntax))
    mutation = draw(st.sampled_from(["flip", "truncate", "lying-length", "bad-vr", "append"]))
    if mutation == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif mutation == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif mutation == "lying-length":
        # Patient's Birth Date (0010,0030) with a length longer than the rest of the data.
        length = draw(st.sampled_from([0xFFFFFFFF, 0x7FFFFFFF, len(data), 0xFFFE]))
        if transfer_syntax == ExplicitVRLittleEndian:
            element = struct.pack("<HH2sH", 0x0010, 0x0030, b"DA", length & 0xFFFF)
        else:
            element = struct.pack("<HHI", 0x0010, 0x0030, length)
        data += element + b"19700101"
    elif mutation == "bad-vr":
        # Private tag (0009,0010) with a VR that does not exist.
        vr = draw(st.binary(min_size=2, max_size=2))
        data += struct.pack("<HH2sH", 0x0009, 0x0010, vr, 4) + b"ABCD"
    else:
        data += draw(st.binary(min_size=1, max_size=64))
    return ds.SOPInstanceUID, bytes(data)


def write_broken_file(path: Path, sop_instance_uid: str, dataset: bytes) -> Path:
    """Write `dataset` after valid File Meta Information naming MR Image Storage and the UID."""
    meta_source = write_instance(path, make_instance(SOPInstanceUID=sop_instance_uid))
    data = meta_source.read_bytes()
    path.write_bytes(data[: dataset_offset(data)] + dataset)
    return path


STOW_BOUNDARY = "fuzz-boundary"


def part10_file(sop_instance_uid: str, dataset: bytes) -> bytes:
    """Return a DICOM file: a valid preamble and File Meta Information, then `dataset`."""
    buffer = io.BytesIO()
    ds = make_instance(SOPInstanceUID=sop_instance_uid)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    return data[: dataset_offset(data)] + dataset


@st.composite
def broken_multipart_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """A STOW-RS request's Content-Type and body, with broken parts or framing."""
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        content = draw(
            st.one_of(
                broken_datasets().map(lambda broken: part10_file(*broken)),
                st.binary(max_size=256),
                generated_instances().map(
                    lambda ds: part10_file(ds.SOPInstanceUID, encode_dataset(ds))
                ),
            )
        )
        headers = draw(
            st.sampled_from(
                [
                    b"Content-Type: application/dicom\r\n",
                    b"",
                    b"Content-Type: text/plain\r\n",
                    b"Content-Type: application/dicom; transfer-syntax=1.2.3\r\n",
                    b"Content-Type\r\n",
                ]
            )
        )
        parts.append(b"--" + STOW_BOUNDARY.encode() + b"\r\n" + headers + b"\r\n" + content)
    body = b"\r\n".join(parts)
    if draw(st.booleans()):
        body += b"\r\n--" + STOW_BOUNDARY.encode() + b"--\r\n"
    framing = draw(st.sampled_from(["as-is", "truncate", "garbage-prefix"]))
    if framing == "truncate" and body:
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif framing == "garbage-prefix":
        body = draw(st.binary(max_size=32)) + body
    content_type = draw(
        st.sampled_from(
            [
                f'multipart/related; type="application/dicom"; boundary={STOW_BOUNDARY}',
                f"multipart/related; boundary={STOW_BOUNDARY}",
                'multipart/related; type="application/dicom"',
                f'multipart/related; type="application/dicom"; boundary="{STOW_BOUNDARY}x"',
                "application/dicom",
                "multipart/related; boundary=",
            ]
        )
    )
    return content_type, body


class TestMalformedDataSets:
    @FUZZ_SETTINGS
    @given(broken=broken_datasets())
    def test_c_store_broken_dataset(
        self, broken: tuple[str, bytes], healthy_afterwards: DicomvaultServer, tmp_path: Path
    ) -> None:
        path = write_broken_file(tmp_path / "broken.dcm", *broken)
        try:
            rsp = send_file_unchanged(healthy_afterwards.port, path, healthy_afterwards.ae_title)
        except AssertionError:
            # Aborting the association is an accepted response to a broken data set.
            pass
        else:
            category = code_to_category(rsp.status)
            assert category in ("Success", "Warning", "Failure"), f"status 0x{rsp.status:04X}"
        check_server_healthy(healthy_afterwards)

    @FUZZ_SETTINGS
    @given(body=broken_multipart_bodies())
    def test_stow_broken_multipart(
        self, body: tuple[str, bytes], healthy_afterwards: DicomvaultServer
    ) -> None:
        content_type, content = body
        url = f"http://{LOOPBACK}:{healthy_afterwards.http_port}/dicomweb/studies"
        response = httpx.post(
            url,
            content=content,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
            timeout=HTTP_TIMEOUT_SECONDS,
        )
        assert response.status_code < 500, response.text
        check_server_healthy(healthy_afterwards)


class TestFoundByFuzzing:
    """Minimal reproducers of the failures the fuzzing found, fixed in dimse/limits.py."""

    def test_malformed_connections_free_slots(self, healthy_afterwards: DicomvaultServer) -> None:
        # More malformed connections than dimse.max_associations (32 by default):
        # each used to hold an association slot for dimse.acse_timeout (30 s).
        for _ in range(40):
            send_raw(healthy_afterwards.port, [encode_pdu(0x99, b"abc")])
        check_server_healthy(healthy_afterwards)

    @pytest.mark.parametrize(
        "pdu",
        [
            pytest.param(encode_pdu(0x03, bytes([0, 0, 0, 0])), id="associate-rj-result-0"),
            pytest.param(encode_pdu(0x02, bytes(68)), id="associate-ac-no-items"),
        ],
    )
    def test_requestor_pdu_no_traceback(
        self, pdu: bytes, healthy_afterwards: DicomvaultServer
    ) -> None:
        send_raw(healthy_afterwards.port, [pdu])
        check_server_healthy(healthy_afterwards)

    def test_associate_rq_without_user_information(
        self, healthy_afterwards: DicomvaultServer
    ) -> None:
        items = b"".join(association_items()[:2])
        pdu = encode_pdu(0x01, association_rq_body(healthy_afterwards.ae_title, items))
        send_raw(healthy_afterwards.port, [pdu])
        check_server_healthy(healthy_afterwards)

    def test_associate_rq_non_ascii_uid(self, healthy_afterwards: DicomvaultServer) -> None:
        items = association_items()
        items[0] = encode_item(0x10, b"\x90\xeb\xc2R\x0b")
        pdu = encode_pdu(0x01, association_rq_body(healthy_afterwards.ae_title, b"".join(items)))
        send_raw(healthy_afterwards.port, [pdu])
        check_server_healthy(healthy_afterwards)

    def test_empty_command_set(self, healthy_afterwards: DicomvaultServer) -> None:
        # One PDV on presentation context 1: a command fragment, the last, with no bytes.
        pdv = struct.pack(">I", 2) + bytes([1, 0x03])
        send_raw(
            healthy_afterwards.port,
            [encode_pdu(0x04, pdv)],
            associate_first=healthy_afterwards.ae_title,
        )
        check_server_healthy(healthy_afterwards)

    def test_data_set_before_command_set(self, healthy_afterwards: DicomvaultServer) -> None:
        # A data set fragment, the last, with no command set before it.
        pdv = struct.pack(">I", 5) + bytes([1, 0x02]) + b"abc"
        send_raw(
            healthy_afterwards.port,
            [encode_pdu(0x04, pdv)],
            associate_first=healthy_afterwards.ae_title,
        )
        check_server_healthy(healthy_afterwards)

    @pytest.mark.parametrize(
        "command_field",
        [
            pytest.param(0x7777, id="unknown"),
            pytest.param(0x0FFF, id="c-cancel-without-message-id"),
        ],
    )
    def test_unusable_command_set(
        self, command_field: int, healthy_afterwards: DicomvaultServer
    ) -> None:
        command = Dataset()
        command.CommandGroupLength = 0
        command.AffectedSOPClassUID = VERIFICATION_SOP_CLASS
        command.CommandField = command_field
        command.MessageID = 1
        command.CommandDataSetType = 0x0101
        encoded = encode_dataset(command, ImplicitVRLittleEndian)
        pdv_value = bytes([1, 0x03]) + encoded
        send_raw(
            healthy_afterwards.port,
            [encode_pdu(0x04, struct.pack(">I", len(pdv_value)) + pdv_value)],
            associate_first=healthy_afterwards.ae_title,
        )
        check_server_healthy(healthy_afterwards)
