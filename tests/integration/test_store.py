"""Storage SCP: store pydicom's bundled files with storescu, find each one, reject broken files.

storescu sends the files; each is then found with a C-FIND at IMAGE level,
all over one pynetdicom association (test_find.py covers findscu).
"""

from __future__ import annotations

import dataclasses
import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from sqlalchemy.engine import make_url

from tests.support.corpus import (
    PYDICOM_CHARSET_FILES,
    PYDICOM_TEST_FILES,
    BundledFile,
    bundled_files,
    dataset_offset,
    leftover_files,
    make_uid,
)
from tests.support.dcmtk import StoreResult, findscu, format_status, storescu
from tests.support.network import LOOPBACK
from tests.support.scu import send_file_unchanged
from tests.support.server import DicomvaultServer, ServerFactory

pytestmark = pytest.mark.integration

# storescu options that propose each transfer syntax of the bundled files.
# Without one, storescu 3.6.7 proposes only uncompressed transfer syntaxes and
# then fails to send a compressed file it cannot decompress.
STORESCU_PROPOSALS: dict[str, list[str]] = {
    uid.ImplicitVRLittleEndian: [],
    uid.ExplicitVRLittleEndian: [],
    uid.ExplicitVRBigEndian: [],
    uid.DeflatedExplicitVRLittleEndian: ["-xd"],
    uid.JPEGBaseline8Bit: ["-xy"],
    uid.JPEGExtended12Bit: ["-xx"],
    uid.JPEGLosslessSV1: ["-xs"],
    uid.JPEGLSLossless: ["-xt"],
    uid.JPEGLSNearLossless: ["-xu"],
    uid.JPEG2000Lossless: ["-xv"],
    uid.JPEG2000: ["-xw"],
    uid.RLELossless: ["-xr"],
}

# Bundled files that pydicom reads but storescu 3.6.7 skips while checking its
# input ("missing SOP class (or instance) in file ..., ignoring file").
_TOO_LONG = "DCMTK cannot parse it: {} is longer than the rest of the file"
_OW_PIXEL_DATA = "DCMTK cannot parse it: encapsulated Pixel Data (7FE0,0010) has VR OW, not OB"
STORESCU_SKIPS = {
    "test_files/MR_truncated.dcm": _TOO_LONG.format("Pixel Data (7FE0,0010)"),
    "test_files/rtplan_truncated.dcm": _TOO_LONG.format("Isocenter Position (300A,012C)"),
    "test_files/SC_rgb_jpeg.dcm": (
        "DCMTK cannot parse it: the dataset is in implicit VR "
        "but its transfer syntax, JPEG Baseline, is explicit VR"
    ),
    "test_files/rtdose_rle.dcm": _OW_PIXEL_DATA,
    "test_files/rtdose_rle_1frame.dcm": _OW_PIXEL_DATA,
}

BUNDLED = bundled_files(PYDICOM_TEST_FILES) + bundled_files(PYDICOM_CHARSET_FILES)

SUCCESS = 0x0000
FIND_TIMEOUT_SECONDS = 30


class FileNotSent(AssertionError):
    """storescu did not send a file, so the archive never saw it."""


def _bundled_params() -> list[object]:
    params: list[object] = []
    for bundled in BUNDLED:
        marks = []
        if bundled.name in STORESCU_SKIPS:
            marks.append(
                pytest.mark.xfail(
                    raises=FileNotSent, strict=True, reason=STORESCU_SKIPS[bundled.name]
                )
            )
        params.append(pytest.param(bundled, id=bundled.name, marks=marks))
    return params


@dataclasses.dataclass
class StoredBundle:
    """The server holding the bundled files and what storescu reported per file."""

    server: DicomvaultServer
    results: dict[str, StoreResult]
    # For each SOP Instance UID, the last file stored with it. Several bundled
    # files share a SOP Instance UID, and the default duplicate policy keeps the
    # newest one.
    newest: dict[str, BundledFile]
    # For each of those, the final C-FIND status and the SOP Instance UIDs of
    # the matches of an IMAGE level query by its study, series and instance UIDs.
    found: dict[str, tuple[int | None, list[str]]]


def find_each(
    server: DicomvaultServer, files: list[BundledFile]
) -> dict[str, tuple[int | None, list[str]]]:
    """Query each file's instance at IMAGE level over one association."""
    ae = AE(ae_title="STORETEST")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = FIND_TIMEOUT_SECONDS
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(LOOPBACK, server.port, ae_title=server.ae_title)
    assert assoc.is_established, server.describe()
    # pynetdicom decodes each response in this thread and gives None for an
    # Identifier whose decoding raised, as a pydicom warning does under
    # pytest's filterwarnings=error. The test checks what the archive
    # returns, not pydicom's view of the corpus's non-conformant values.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _find_each(assoc, files)


def _find_each(assoc: Any, files: list[BundledFile]) -> dict[str, tuple[int | None, list[str]]]:
    found: dict[str, tuple[int | None, list[str]]] = {}
    try:
        for bundled in files:
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "IMAGE"
            identifier.StudyInstanceUID = bundled.study_instance_uid
            identifier.SeriesInstanceUID = bundled.series_instance_uid
            identifier.SOPInstanceUID = bundled.sop_instance_uid
            matches: list[str] = []
            final: int | None = None
            for status, match in assoc.send_c_find(
                identifier, StudyRootQueryRetrieveInformationModelFind
            ):
                code = status.get("Status") if status else None
                if code in (0xFF00, 0xFF01) and match is not None:
                    matches.append(match.SOPInstanceUID)
                else:
                    final = code
            found[bundled.sop_instance_uid] = (final, matches)
    finally:
        assoc.release()
    return found


@pytest.fixture(scope="module")
def stored_bundle(start_module_server: ServerFactory) -> StoredBundle:
    """Start a server and store every bundled file, one storescu run per transfer syntax."""
    server = start_module_server()
    results: dict[str, StoreResult] = {}
    newest: dict[str, BundledFile] = {}

    by_syntax: dict[uid.UID, list[BundledFile]] = {}
    for bundled in BUNDLED:
        by_syntax.setdefault(bundled.transfer_syntax_uid, []).append(bundled)

    for syntax, group in sorted(by_syntax.items()):
        if syntax not in STORESCU_PROPOSALS:
            for bundled in group:
                results[bundled.name] = StoreResult(
                    str(bundled.path),
                    messages=[
                        f"no storescu proposal option known for {syntax.name}: "
                        "add one to STORESCU_PROPOSALS"
                    ],
                )
            continue

        run = storescu(
            server.port,
            [b.path for b in group],
            server.ae_title,
            options=STORESCU_PROPOSALS[syntax],
        )
        for bundled in group:
            result = run.results[str(bundled.path)]
            results[bundled.name] = result
            if result.sent and result.status == SUCCESS:
                newest[bundled.sop_instance_uid] = bundled

    return StoredBundle(server, results, newest, find_each(server, list(newest.values())))


@pytest.mark.parametrize("bundled", _bundled_params())
def test_bundled_file_found_once(bundled: BundledFile, stored_bundle: StoredBundle) -> None:
    result = stored_bundle.results[bundled.name]
    if not result.sent:
        raise FileNotSent(f"storescu did not send {bundled.name}:\n" + "\n".join(result.messages))
    assert result.status == SUCCESS, (
        f"C-STORE of {bundled.name} answered status {format_status(result.status)}, "
        f"Error Comment {result.error_comment!r}, storescu messages {result.messages}"
    )

    # The query used the UIDs of the newest file stored with this SOP Instance UID.
    status, matches = stored_bundle.found[bundled.sop_instance_uid]
    assert status == SUCCESS, f"C-FIND status {format_status(status)}"
    assert matches == [bundled.sop_instance_uid]


# Broken files, each built from a valid CT image with new UIDs. storescu parses
# files before sending and skips broken ones, so they go through pynetdicom,
# which sends the bytes after the File Meta Information unchanged.

SOURCE_FILE = PYDICOM_TEST_FILES / "CT_small.dcm"


@dataclasses.dataclass(frozen=True)
class BrokenFile:
    """A file to send and the UIDs the archive must not index."""

    path: Path
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str


def _write_copy(out_dir: Path, name: str, remove_sop_instance_uid: bool = False) -> BrokenFile:
    ds = pydicom.dcmread(SOURCE_FILE)
    ds.SOPInstanceUID = make_uid("broken", name, "instance")
    ds.StudyInstanceUID = make_uid("broken", name, "study")
    ds.SeriesInstanceUID = make_uid("broken", name, "series")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    broken = BrokenFile(
        out_dir / f"{name}.dcm", ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID
    )
    if remove_sop_instance_uid:
        # The File Meta Information keeps the UID, which becomes the
        # request's Affected SOP Instance UID.
        del ds.SOPInstanceUID
    ds.save_as(broken.path, enforce_file_format=True)
    return broken


def _truncated_in_pixel_data(out_dir: Path) -> BrokenFile:
    broken = _write_copy(out_dir, "truncated-pixel-data")
    data = broken.path.read_bytes()
    offset = dataset_offset(data)
    # Pixel Data is the last element and takes most of the file, so the cut
    # halfway through the dataset falls inside its value.
    broken.path.write_bytes(data[: offset + (len(data) - offset) // 2])
    return broken


def _truncated_in_header(out_dir: Path) -> BrokenFile:
    broken = _write_copy(out_dir, "truncated-header")
    data = broken.path.read_bytes()
    # 301 bytes into the dataset: within the first elements, mid-value or mid-tag.
    broken.path.write_bytes(data[: dataset_offset(data) + 301])
    return broken


def _garbage_after_meta(out_dir: Path) -> BrokenFile:
    broken = _write_copy(out_dir, "garbage-after-meta")
    data = broken.path.read_bytes()
    garbage = random.Random(0).randbytes(4096)
    broken.path.write_bytes(data[: dataset_offset(data)] + garbage)
    return broken


def _missing_sop_instance_uid(out_dir: Path) -> BrokenFile:
    return _write_copy(out_dir, "no-sop-instance-uid", remove_sop_instance_uid=True)


BROKEN_FILES: dict[str, Callable[[Path], BrokenFile]] = {
    "truncated-pixel-data": _truncated_in_pixel_data,
    "truncated-header": _truncated_in_header,
    "garbage-after-meta": _garbage_after_meta,
    "no-sop-instance-uid": _missing_sop_instance_uid,
}


@pytest.fixture(scope="module")
def raw_server(start_module_server: ServerFactory) -> DicomvaultServer:
    """A server for the files sent unchanged, shared by the tests below.

    Each test compares the files it leaves with those before it.
    """
    return start_module_server()


@pytest.mark.parametrize("build", BROKEN_FILES.values(), ids=BROKEN_FILES.keys())
def test_broken_file_rejected(
    build: Callable[[Path], BrokenFile], raw_server: DicomvaultServer, tmp_path: Path
) -> None:
    server = raw_server
    broken = build(tmp_path)
    before = leftover_files(server.data_dir)

    rsp = send_file_unchanged(server.port, broken.path, server.ae_title)

    assert rsp.status == 0xA900 or 0xC000 <= rsp.status <= 0xCFFF, (
        f"expected a failure status 0xA900 or 0xCxxx, got 0x{rsp.status:04X}"
    )
    assert rsp.error_comment, "the failure response has no Error Comment (0000,0902)"
    assert leftover_files(server.data_dir) == before

    find = findscu(
        server.port,
        {
            "QueryRetrieveLevel": "IMAGE",
            "StudyInstanceUID": broken.study_instance_uid,
            "SeriesInstanceUID": broken.series_instance_uid,
            "SOPInstanceUID": broken.sop_instance_uid,
        },
        server.ae_title,
    )
    assert find.status == SUCCESS, find.describe()
    assert find.responses == [], find.describe()


# The files storescu skips, sent unchanged with pynetdicom instead: the two
# truncated ones are rejected, the others are stored although DCMTK cannot
# parse them.
SKIPPED_BY_STORESCU_EXPECTED = {
    "test_files/MR_truncated.dcm": "rejected",
    "test_files/rtplan_truncated.dcm": "rejected",
    "test_files/SC_rgb_jpeg.dcm": "stored",
    "test_files/rtdose_rle.dcm": "stored",
    "test_files/rtdose_rle_1frame.dcm": "stored",
}


@pytest.mark.parametrize(
    "name", SKIPPED_BY_STORESCU_EXPECTED, ids=list(SKIPPED_BY_STORESCU_EXPECTED)
)
def test_storescu_skipped_file_sent_raw(name: str, raw_server: DicomvaultServer) -> None:
    server = raw_server
    path = PYDICOM_TEST_FILES.parent / name
    before = leftover_files(server.data_dir)

    rsp = send_file_unchanged(server.port, path, server.ae_title)

    added = set(leftover_files(server.data_dir)) - set(before)
    if SKIPPED_BY_STORESCU_EXPECTED[name] == "stored":
        assert rsp.status == SUCCESS, rsp.error_comment
        assert len(added) == 1
    else:
        assert rsp.status == 0xC000, f"0x{rsp.status:04X} {rsp.error_comment}"
        assert rsp.error_comment.startswith("The dataset is truncated")
        assert leftover_files(server.data_dir) == before


def test_server_log_has_no_database_password(stored_bundle: StoredBundle) -> None:
    # The PostgreSQL URL of the index carries a password; SQLite's has none.
    password = (
        make_url(stored_bundle.server.index_url).password
        if stored_bundle.server.index_url
        else None
    )
    log = stored_bundle.server.log_text()

    assert "Association accepted" in log, log[-2000:]
    if password:
        assert f":{password}@" not in log
