"""Names in every character set of pydicom's charset files are stored, found and returned."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from dicomvault.archive import Archive
from dicomvault.config import load_settings
from dicomvault.dicom.matching import parse_identifier
from dicomvault.dimse.identifiers import build_identifier
from dicomvault.index.database import open_index_engine
from dicomvault.storage.filesystem import FilesystemStorage
from tests.support.corpus import PYDICOM_CHARSET_FILES, dataset_offset

# Files whose Patient's Name is set, with the character set each one uses.
NAMED_FILES = {
    "chrArab.dcm": "ISO_IR 127",
    "chrFren.dcm": "ISO_IR 100",
    "chrGerm.dcm": "ISO_IR 100",
    "chrGreek.dcm": "ISO_IR 126",
    "chrH31.dcm": "ISO 2022 IR 87",
    "chrH32.dcm": "ISO 2022 IR 13 and IR 87",
    "chrHbrw.dcm": "ISO_IR 138",
    "chrI2.dcm": "ISO 2022 IR 149",
    "chrKoreanMulti.dcm": "ISO 2022 IR 149",
    "chrRuss.dcm": "ISO_IR 144",
    "chrX1.dcm": "ISO_IR 192",
    "chrX2.dcm": "GB18030",
}


def read_quietly(path: Path) -> Dataset:
    # Some charset files carry values pydicom warns about (the tests treat
    # warnings as errors); the archive reads them tolerantly too.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        str(ds.PatientName)
    return ds


def encode_response(ds: Dataset) -> Dataset:
    """Encode a response identifier as pynetdicom would, then decode it again."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = True
    write_dataset(buffer, ds)
    # The decoded dataset's own Specific Character Set decodes its values.
    return read_dataset(DicomBytesIO(buffer.getvalue()), True, True)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    data_dir = tmp_path_factory.mktemp("charsets")
    settings = load_settings(environ={}, overrides={"storage.data_dir": str(data_dir)})
    archive = Archive(
        settings, open_index_engine(settings.index_url), FilesystemStorage(data_dir / "storage")
    )
    for name in NAMED_FILES:
        path = PYDICOM_CHARSET_FILES / name
        data = path.read_bytes()
        ds = read_quietly(path)
        archive.store(data[dataset_offset(data) :], ds.file_meta.TransferSyntaxUID)
    return archive


@pytest.mark.parametrize(
    "name", list(NAMED_FILES), ids=[f"{name}-{charset}" for name, charset in NAMED_FILES.items()]
)
def test_name_found_and_returned(archive: Archive, name: str) -> None:
    expected = str(read_quietly(PYDICOM_CHARSET_FILES / name).PatientName)
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 192"
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientName = expected
    identifier.PatientID = ""
    query = parse_identifier(identifier, "PATIENT")

    results = list(archive.search(query))
    assert len(results) == 1

    response = build_identifier(
        results[0], query.return_keys, "PATIENT", "DICOMVAULT", ["ISO_IR 192"]
    )
    assert str(encode_response(response).PatientName) == expected


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("山田*", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        ("홍^길동", "Hong^Gildong=洪^吉洞=홍^길동"),
        ("王^小东", "Wang^XiaoDong=王^小东"),
        ("Διονυσιος", "Διονυσιος"),
        ("buc^jér*", "Buc^Jérôme"),
    ],
    ids=[
        "japanese-wildcard",
        "korean-phonetic-group",
        "gb18030-ideographic",
        "greek",
        "french-case-insensitive",
    ],
)
def test_component_group_patterns(archive: Archive, pattern: str, expected: str) -> None:
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 192"
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientName = pattern
    query = parse_identifier(identifier, "PATIENT")

    names = sorted(result.record["PatientName"][0] for result in archive.search(query))
    assert expected in names


def test_response_keeps_requested_charset(archive: Archive) -> None:
    identifier = Dataset()
    identifier.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientName = "Yamada^Tarou"
    query = parse_identifier(identifier, "PATIENT")
    result = next(iter(archive.search(query)))

    response = build_identifier(
        result, query.return_keys, "PATIENT", "DICOMVAULT", ["", "ISO 2022 IR 87"]
    )
    assert response.SpecificCharacterSet == ["", "ISO 2022 IR 87"]


def test_response_falls_back_to_utf8(archive: Archive) -> None:
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 100"
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientName = "Hong*"
    query = parse_identifier(identifier, "PATIENT")
    result = next(iter(archive.search(query)))

    response = build_identifier(result, query.return_keys, "PATIENT", "DICOMVAULT", ["ISO_IR 100"])
    assert response.SpecificCharacterSet == "ISO_IR 192"
