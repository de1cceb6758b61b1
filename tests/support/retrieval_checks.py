"""Retrieval checks shared by the integration tests of stored-file back-ends.

A module that stores the bundled corpus (one file per transfer syntax,
stored with storescu) in a fixture named ``archive`` subclasses
:class:`RetrieveChecks` to check that C-GET and WADO-RS return the
datasets as stored.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
)

from dicomvault.encryption.keys import generate_key_file
from tests.support.corpus import BundledFile, dataset_offset
from tests.support.network import LOOPBACK, free_port
from tests.support.pixels import pick_corpus
from tests.support.server import DicomvaultServer

TIMEOUT_SECONDS = 30
DESTINATION = "ENCDEST"
# One bundled file per transfer syntax, and the storescu option that proposes it.
STORESCU_PROPOSALS: dict[str, list[str]] = {
    uid.ImplicitVRLittleEndian: [],
    uid.ExplicitVRLittleEndian: [],
    uid.ExplicitVRBigEndian: [],
    uid.DeflatedExplicitVRLittleEndian: ["-xd"],
    uid.JPEGBaseline8Bit: ["-xy"],
    uid.JPEG2000: ["-xw"],
    uid.JPEG2000Lossless: ["-xv"],
    uid.RLELossless: ["-xr"],
}
CORPUS = pick_corpus(list(STORESCU_PROPOSALS))
TRAILING_PADDING = 0xFFFCFFFC  # Data Set Trailing Padding
DICOM_ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def encryption_config(key_file: Path, *previous: Path) -> str:
    """Return the TOML that turns encryption on with ``key_file`` as the current key."""
    listed = ", ".join(f'"{path}"' for path in previous)
    return (
        f'[encryption]\nenabled = true\nkey_file = "{key_file}"\nprevious_key_files = [{listed}]\n'
    )


def new_key(folder: Path, name: str) -> tuple[Path, str]:
    """Write a new key file; return its path and key id."""
    path = folder / name
    return path, generate_key_file(path)


def original_dataset(bundled: BundledFile) -> bytes:
    data = bundled.path.read_bytes()
    return data[dataset_offset(data) :]


def assert_same_dataset(bundled: BundledFile, dataset: Dataset) -> None:
    """Check that a received dataset has the element values of the bundled file stored.

    storescu encodes each file again before sending it: it leaves out group
    lengths and Data Set Trailing Padding, and may change a VR (OW to OB for
    encapsulated Pixel Data). So the other element values are compared, not
    the bytes.
    """
    assert element_values(dataset) == element_values(pydicom.dcmread(bundled.path)), bundled.name


def decode(data: bytes, syntax: str) -> Dataset:
    """Decode a dataset received in a C-STORE request in ``syntax``."""
    target = uid.UID(syntax)
    return read_dataset(io.BytesIO(data), target.is_implicit_VR, target.is_little_endian)


def element_values(ds: Dataset) -> dict[int, Any]:
    """Map each tag to its value, sequences recursively, without what storescu drops."""
    values: dict[int, Any] = {}
    for element in ds:
        if element.tag.element == 0 or element.tag == TRAILING_PADDING:
            continue
        if element.VR == "SQ":
            values[element.tag] = [element_values(item) for item in element.value]
        else:
            values[element.tag] = element.value
    return values


def parse_multipart(response: httpx.Response) -> list[bytes]:
    """Return the part bodies of a multipart/related response."""
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related"), content_type
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"')
    parts = []
    for chunk in response.content.split(f"--{boundary}".encode())[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, body = chunk.partition(b"\r\n\r\n")
        parts.append(body[: -len(b"\r\n")])
    return parts


def http_client(server: DicomvaultServer) -> httpx.Client:
    return httpx.Client(base_url=f"http://{LOOPBACK}:{server.http_port}", timeout=TIMEOUT_SECONDS)


def instance_path(bundled: BundledFile) -> str:
    return (
        f"/dicomweb/studies/{bundled.study_instance_uid}/series/{bundled.series_instance_uid}"
        f"/instances/{bundled.sop_instance_uid}"
    )


def storage_contexts() -> list[tuple[str, str]]:
    """The (SOP class, transfer syntax) pairs that receive the corpus as stored.

    Deflated datasets are converted, so Explicit VR Little Endian is added.
    """
    pairs = set()
    for bundled in CORPUS:
        sop_class = str(pydicom.dcmread(bundled.path, stop_before_pixels=True).SOPClassUID)
        pairs.add((sop_class, str(bundled.transfer_syntax_uid)))
        pairs.add((sop_class, str(uid.ExplicitVRLittleEndian)))
    return sorted(pairs)


def study_identifier() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = sorted({b.study_instance_uid for b in CORPUS})
    return ds


def assert_received(received: dict[str, tuple[bytes, str]]) -> None:
    for bundled in CORPUS:
        assert bundled.sop_instance_uid in received, bundled.name
        data, syntax = received[bundled.sop_instance_uid]
        assert_same_dataset(bundled, decode(data, syntax))


class MoveDestination:
    """A pynetdicom Storage SCP on a loopback port that keeps the received dataset bytes."""

    def __enter__(self) -> tuple[int, dict[str, tuple[bytes, str]]]:
        received: dict[str, tuple[bytes, str]] = {}

        def handle_store(event: Any) -> int:
            received[str(event.request.AffectedSOPInstanceUID)] = (
                event.request.DataSet.getvalue(),
                str(event.context.transfer_syntax),
            )
            return 0x0000

        ae = AE(ae_title=DESTINATION)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_SECONDS
        for sop_class in sorted({sop_class for sop_class, _ in storage_contexts()}):
            ae.add_supported_context(sop_class, list(STORESCU_PROPOSALS))
        port = free_port()
        self.server = ae.start_server(
            (LOOPBACK, port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)]
        )
        return port, received

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()


class RetrieveChecks:
    """Tests that C-GET and WADO-RS return the stored corpus; needs an ``archive`` fixture."""

    def test_wado_rs_as_stored(self, archive: DicomvaultServer) -> None:
        with http_client(archive) as client:
            for bundled in CORPUS:
                response = client.get(instance_path(bundled), headers={"Accept": DICOM_ANY_SYNTAX})
                assert response.status_code == 200, response.text
                (part,) = parse_multipart(response)
                assert_same_dataset(bundled, pydicom.dcmread(io.BytesIO(part)))

    def test_c_get(self, archive: DicomvaultServer) -> None:
        received: dict[str, tuple[bytes, str]] = {}

        def handle_store(event: Any) -> int:
            received[str(event.request.AffectedSOPInstanceUID)] = (
                event.request.DataSet.getvalue(),
                str(event.context.transfer_syntax),
            )
            return 0x0000

        ae = AE(ae_title="GETSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_SECONDS
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        roles = []
        for sop_class, syntax in storage_contexts():
            ae.add_requested_context(sop_class, [syntax])
            roles.append(build_role(sop_class, scp_role=True))
        assoc = ae.associate(
            LOOPBACK,
            archive.port,
            ae_title=archive.ae_title,
            ext_neg=roles,
            evt_handlers=[(evt.EVT_C_STORE, handle_store)],
        )
        assert assoc.is_established, archive.describe()
        try:
            statuses = [
                status.Status
                for status, _ in assoc.send_c_get(
                    study_identifier(), StudyRootQueryRetrieveInformationModelGet
                )
            ]
        finally:
            assoc.release()

        assert statuses[-1] == 0x0000, archive.log_text()
        assert_received(received)
