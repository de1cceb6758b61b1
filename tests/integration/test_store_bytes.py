"""Storage SCP: the stored file contains the received dataset byte for byte."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom import uid

from tests.support.corpus import PYDICOM_TEST_FILES, dataset_offset, stored_file_for
from tests.support.scu import send_file_unchanged
from tests.support.server import DicomvaultServer, ServerFactory

pytestmark = pytest.mark.integration

# One pydicom test file per transfer syntax, sent in that transfer syntax.
FILES_BY_SYNTAX = [
    pytest.param("MR_small_implicit.dcm", uid.ImplicitVRLittleEndian, id="implicit-le"),
    pytest.param("CT_small.dcm", uid.ExplicitVRLittleEndian, id="explicit-le"),
    pytest.param("MR_small_bigendian.dcm", uid.ExplicitVRBigEndian, id="explicit-be"),
    pytest.param("image_dfl.dcm", uid.DeflatedExplicitVRLittleEndian, id="deflate"),
    pytest.param("SC_rgb_jpeg_dcmtk.dcm", uid.JPEGBaseline8Bit, id="jpeg-baseline"),
    pytest.param("JPGExtended.dcm", uid.JPEGExtended12Bit, id="jpeg-extended"),
    pytest.param("SC_rgb_jpeg_gdcm.dcm", uid.JPEGLosslessSV1, id="jpeg-lossless"),
    pytest.param("MR_small_jpeg_ls_lossless.dcm", uid.JPEGLSLossless, id="jpeg-ls"),
    pytest.param("MR_small_jp2klossless.dcm", uid.JPEG2000Lossless, id="jpeg2000-lossless"),
    pytest.param("JPEG2000.dcm", uid.JPEG2000, id="jpeg2000"),
    pytest.param("MR_small_RLE.dcm", uid.RLELossless, id="rle"),
]


@pytest.fixture(scope="module")
def index_backend() -> str:
    """The bytes of stored files do not depend on the index back-end."""
    return "sqlite"


@pytest.fixture(scope="module")
def server(start_module_server: ServerFactory) -> DicomvaultServer:
    return start_module_server()


@pytest.mark.parametrize(("name", "transfer_syntax"), FILES_BY_SYNTAX)
def test_stored_bytes_match_sent(
    name: str, transfer_syntax: uid.UID, server: DicomvaultServer
) -> None:
    source = PYDICOM_TEST_FILES / name
    source_ds = pydicom.dcmread(source, stop_before_pixels=True)
    assert source_ds.file_meta.TransferSyntaxUID == transfer_syntax

    rsp = send_file_unchanged(server.port, source, server.ae_title)
    assert rsp.status == 0x0000, f"status 0x{rsp.status:04X}, Error Comment {rsp.error_comment!r}"

    stored = stored_file_for(server.data_dir, source_ds.SOPInstanceUID)
    assert len(stored) == 1, f"stored files for {source_ds.SOPInstanceUID}: {stored}"
    stored_path: Path = stored[0]

    source_bytes = source.read_bytes()
    stored_bytes = stored_path.read_bytes()
    assert (
        stored_bytes[dataset_offset(stored_bytes) :] == source_bytes[dataset_offset(source_bytes) :]
    )

    stored_meta = pydicom.dcmread(stored_path, stop_before_pixels=True).file_meta
    assert stored_meta.TransferSyntaxUID == transfer_syntax
    assert stored_meta.MediaStorageSOPClassUID == source_ds.SOPClassUID
    assert stored_meta.MediaStorageSOPInstanceUID == source_ds.SOPInstanceUID
