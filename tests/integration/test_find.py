"""Query/Retrieve SCP, C-FIND: findscu at each level and for each kind of matching.

The controlled corpus below is written with pydicom and stored with storescu
once per module. Expected matches are named by the corpus keys ("S1",
"S1-CT") and compared as sets, because PS3.4 C.4.1 leaves the order of
C-FIND responses to the SCP.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    UltrasoundImageStorage,
)
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from tests.support.corpus import (
    PYDICOM_CHARSET_FILES,
    BundledFile,
    bundled_files,
    make_uid,
    write_instance,
)
from tests.support.dcmtk import FindRun, findscu, format_status, storescu
from tests.support.server import DicomvaultServer, ServerFactory

pytestmark = pytest.mark.integration

SUCCESS = 0x0000

# Patient ID: (Patient's Name, Patient's Birth Date, Patient's Sex)
PATIENTS = {
    "FIND-P1": ("Doe^John", "19700101", "M"),
    "FIND-P2": ("Smith^Jane", "19801231", "F"),
    "FIND-P3": ("Doe^Jane", "19900615", "F"),
}
# Study key: (Patient ID, Study Date, Accession Number, Study Description)
STUDIES = {
    "S1": ("FIND-P1", "20200115", "ACC-001", "CT chest"),
    "S2": ("FIND-P1", "20210620", "ACC-002", "MR head"),
    "S3": ("FIND-P2", "20190301", "ACC-003", "CT abdomen"),
    "S4": ("FIND-P3", "20221231", "ACC-004", "US neck"),
}
# Series key: (study key, Modality, Series Number, number of instances)
SERIES = {
    "S1-CT": ("S1", "CT", 1, 3),
    "S1-MR": ("S1", "MR", 2, 1),
    "S2-MR": ("S2", "MR", 1, 2),
    "S3-CT": ("S3", "CT", 1, 1),
    "S4-US": ("S4", "US", 1, 1),
}
SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage, "US": UltrasoundImageStorage}


def study_uid(study: str) -> str:
    return make_uid("find", study)


def series_uid(series: str) -> str:
    return make_uid("find", series)


def instance_uid(series: str, number: int) -> str:
    return make_uid("find", series, str(number))


def _corpus_datasets() -> Iterable[Dataset]:
    for series, (study, modality, series_number, count) in SERIES.items():
        patient_id, study_date, accession, description = STUDIES[study]
        name, birth_date, sex = PATIENTS[patient_id]
        for number in range(1, count + 1):
            ds = Dataset()
            ds.SOPClassUID = SOP_CLASSES[modality]
            ds.SOPInstanceUID = instance_uid(series, number)
            ds.PatientName = name
            ds.PatientID = patient_id
            ds.PatientBirthDate = birth_date
            ds.PatientSex = sex
            ds.StudyInstanceUID = study_uid(study)
            ds.StudyDate = study_date
            ds.StudyTime = "101500"
            ds.AccessionNumber = accession
            ds.StudyID = study
            ds.StudyDescription = description
            ds.SeriesInstanceUID = series_uid(series)
            ds.Modality = modality
            ds.SeriesNumber = series_number
            ds.InstanceNumber = number
            yield ds


def _store(server: DicomvaultServer, paths: list[Path], folder: Path | None = None) -> None:
    """Store `paths` with storescu, or scan `folder` for them, and check each succeeded."""
    if folder is None:
        run = storescu(server.port, paths, server.ae_title)
    else:
        run = storescu(server.port, [folder], server.ae_title, options=["+sd", "+r"])
    for path in paths:
        result = run.results[str(path)]
        assert result.sent, f"storescu did not send {path}: {result.messages}"
        assert result.status == SUCCESS, (
            f"C-STORE of {path.name}: status {format_status(result.status)}, "
            f"Error Comment {result.error_comment!r}"
        )


@pytest.fixture(scope="module")
def server(
    start_module_server: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> DicomvaultServer:
    """A server holding the controlled corpus."""
    server = start_module_server()
    folder = tmp_path_factory.mktemp("find-corpus")
    # One subfolder per patient, so that storescu has to recurse (+r).
    paths = [
        write_instance(folder / ds.PatientID / f"{ds.SOPInstanceUID}.dcm", ds)
        for ds in _corpus_datasets()
    ]
    _store(server, paths, folder=folder)
    return server


def find(
    server: DicomvaultServer, level: str, keys: Mapping[str, str], model: str = "study"
) -> FindRun:
    """Run findscu at `level` and check that the final status is Success."""
    run = findscu(server.port, {"QueryRetrieveLevel": level, **keys}, server.ae_title, model=model)
    assert run.status == SUCCESS, run.describe()
    return run


def values(run: FindRun, keyword: str) -> list[str]:
    """The value of `keyword` in each response, as strings."""
    return [str(ds.get(keyword, "")) for ds in run.responses]


def keys_of(uids: Iterable[str], table: Mapping[str, str]) -> set[str]:
    """Map returned UIDs back to corpus keys, keeping unknown UIDs as they are."""
    by_uid = {uid: key for key, uid in table.items()}
    return {by_uid.get(uid, uid) for uid in uids}


STUDY_UIDS = {study: study_uid(study) for study in STUDIES}
SERIES_UIDS = {series: series_uid(series) for series in SERIES}


class TestPatientLevel:
    """Patient Root model, QueryRetrieveLevel PATIENT."""

    def test_single_value(self, server: DicomvaultServer) -> None:
        run = find(server, "PATIENT", {"PatientID": "FIND-P1", "PatientName": ""}, "patient")

        assert values(run, "PatientID") == ["FIND-P1"], run.describe()
        assert values(run, "PatientName") == ["Doe^John"]

    def test_universal_returns_values(self, server: DicomvaultServer) -> None:
        run = find(
            server,
            "PATIENT",
            {
                "PatientID": "FIND-P2",
                "PatientName": "",
                "PatientBirthDate": "",
                "PatientSex": "",
            },
            "patient",
        )

        assert len(run.responses) == 1, run.describe()
        ds = run.responses[0]
        assert ds.PatientName == "Smith^Jane"
        assert ds.PatientBirthDate == "19801231"
        assert ds.PatientSex == "F"

    @pytest.mark.parametrize(
        ("pattern", "expected"),
        [
            pytest.param("Doe^*", {"FIND-P1", "FIND-P3"}, id="star-suffix"),
            pytest.param("*^*", {"FIND-P1", "FIND-P2", "FIND-P3"}, id="star-both"),
            pytest.param("Doe^J?ne", {"FIND-P3"}, id="question-mark"),
            pytest.param("?oe^*", {"FIND-P1", "FIND-P3"}, id="question-mark-first"),
        ],
    )
    def test_wildcard(self, server: DicomvaultServer, pattern: str, expected: set[str]) -> None:
        run = find(server, "PATIENT", {"PatientName": pattern, "PatientID": ""}, "patient")

        assert set(values(run, "PatientID")) == expected, run.describe()

    @pytest.mark.parametrize("pattern", ["doe^john", "DOE^JOHN", "dOE^jOHN", "doe^jo*"])
    def test_name_case_insensitive(self, server: DicomvaultServer, pattern: str) -> None:
        run = find(server, "PATIENT", {"PatientName": pattern, "PatientID": ""}, "patient")

        assert values(run, "PatientID") == ["FIND-P1"], run.describe()

    def test_birth_date_range(self, server: DicomvaultServer) -> None:
        run = find(
            server,
            "PATIENT",
            {
                "PatientBirthDate": "19750101-19851231",
                "PatientID": "",
            },
            "patient",
        )

        assert values(run, "PatientID") == ["FIND-P2"], run.describe()

    def test_related_studies_count(self, server: DicomvaultServer) -> None:
        run = find(
            server,
            "PATIENT",
            {
                "PatientID": "FIND-P1",
                "NumberOfPatientRelatedStudies": "",
            },
            "patient",
        )

        assert values(run, "NumberOfPatientRelatedStudies") == ["2"], run.describe()


class TestStudyLevel:
    """Study Root model, QueryRetrieveLevel STUDY."""

    def test_single_value(self, server: DicomvaultServer) -> None:
        run = find(server, "STUDY", {"StudyInstanceUID": study_uid("S1"), "AccessionNumber": ""})

        assert values(run, "StudyInstanceUID") == [study_uid("S1")], run.describe()
        assert values(run, "AccessionNumber") == ["ACC-001"]

    def test_universal_returns_values(self, server: DicomvaultServer) -> None:
        run = find(
            server,
            "STUDY",
            {
                "StudyInstanceUID": study_uid("S2"),
                "StudyDate": "",
                "StudyTime": "",
                "AccessionNumber": "",
                "StudyID": "",
                "StudyDescription": "",
                "PatientName": "",
                "PatientID": "",
            },
        )

        assert len(run.responses) == 1, run.describe()
        ds = run.responses[0]
        assert ds.StudyDate == "20210620"
        assert ds.StudyTime == "101500"
        assert ds.AccessionNumber == "ACC-002"
        assert ds.StudyID == "S2"
        assert ds.StudyDescription == "MR head"
        assert ds.PatientName == "Doe^John"
        assert ds.PatientID == "FIND-P1"

    @pytest.mark.parametrize(
        ("date", "expected"),
        [
            pytest.param("20200115", {"S1"}, id="single"),
            pytest.param("20200101-20201231", {"S1"}, id="closed"),
            pytest.param("-20200131", {"S1", "S3"}, id="open-start"),
            pytest.param("20210101-", {"S2", "S4"}, id="open-end"),
            pytest.param("20210620-20210620", {"S2"}, id="one-day"),
        ],
    )
    def test_date_range(self, server: DicomvaultServer, date: str, expected: set[str]) -> None:
        run = find(server, "STUDY", {"StudyDate": date, "StudyInstanceUID": ""})

        assert keys_of(values(run, "StudyInstanceUID"), STUDY_UIDS) == expected, run.describe()

    @pytest.mark.parametrize(
        ("keyword", "pattern", "expected"),
        [
            pytest.param("PatientName", "Doe^*", {"S1", "S2", "S4"}, id="name-star"),
            pytest.param("PatientName", "*^*", {"S1", "S2", "S3", "S4"}, id="name-star-both"),
            pytest.param(
                "AccessionNumber", "ACC-00?", {"S1", "S2", "S3", "S4"}, id="accession-question"
            ),
            pytest.param("StudyDescription", "CT*", {"S1", "S3"}, id="description-star"),
        ],
    )
    def test_wildcard(
        self, server: DicomvaultServer, keyword: str, pattern: str, expected: set[str]
    ) -> None:
        run = find(server, "STUDY", {keyword: pattern, "StudyInstanceUID": ""})

        assert keys_of(values(run, "StudyInstanceUID"), STUDY_UIDS) == expected, run.describe()

    def test_name_case_insensitive(self, server: DicomvaultServer) -> None:
        run = find(server, "STUDY", {"PatientName": "SMITH^jane", "StudyInstanceUID": ""})

        assert keys_of(values(run, "StudyInstanceUID"), STUDY_UIDS) == {"S3"}, run.describe()

    def test_uid_list(self, server: DicomvaultServer) -> None:
        uids = f"{study_uid('S1')}\\{study_uid('S3')}"
        run = find(server, "STUDY", {"StudyInstanceUID": uids})

        assert keys_of(values(run, "StudyInstanceUID"), STUDY_UIDS) == {"S1", "S3"}, run.describe()

    def test_computed_attributes(self, server: DicomvaultServer) -> None:
        run = find(
            server,
            "STUDY",
            {
                "StudyInstanceUID": study_uid("S1"),
                "NumberOfStudyRelatedSeries": "",
                "NumberOfStudyRelatedInstances": "",
                "ModalitiesInStudy": "",
            },
        )

        assert len(run.responses) == 1, run.describe()
        ds = run.responses[0]
        assert ds.NumberOfStudyRelatedSeries == 2
        assert ds.NumberOfStudyRelatedInstances == 4
        assert set(ds.ModalitiesInStudy) == {"CT", "MR"}

    def test_modalities_in_study_matching(self, server: DicomvaultServer) -> None:
        run = find(server, "STUDY", {"ModalitiesInStudy": "MR", "StudyInstanceUID": ""})

        assert keys_of(values(run, "StudyInstanceUID"), STUDY_UIDS) == {"S1", "S2"}, run.describe()


class TestSeriesLevel:
    """Study Root model, QueryRetrieveLevel SERIES within study S1."""

    def test_universal(self, server: DicomvaultServer) -> None:
        run = find(
            server,
            "SERIES",
            {
                "StudyInstanceUID": study_uid("S1"),
                "SeriesInstanceUID": "",
                "Modality": "",
            },
        )

        assert keys_of(values(run, "SeriesInstanceUID"), SERIES_UIDS) == {"S1-CT", "S1-MR"}, (
            run.describe()
        )
        assert sorted(values(run, "Modality")) == ["CT", "MR"]

    def test_single_value(self, server: DicomvaultServer) -> None:
        run = find(
            server,
            "SERIES",
            {
                "StudyInstanceUID": study_uid("S1"),
                "Modality": "CT",
                "SeriesInstanceUID": "",
            },
        )

        assert keys_of(values(run, "SeriesInstanceUID"), SERIES_UIDS) == {"S1-CT"}, run.describe()

    def test_wildcard(self, server: DicomvaultServer) -> None:
        run = find(
            server,
            "SERIES",
            {
                "StudyInstanceUID": study_uid("S1"),
                "Modality": "M?",
                "SeriesInstanceUID": "",
            },
        )

        assert keys_of(values(run, "SeriesInstanceUID"), SERIES_UIDS) == {"S1-MR"}, run.describe()

    def test_uid_list(self, server: DicomvaultServer) -> None:
        run = find(
            server,
            "SERIES",
            {
                "StudyInstanceUID": study_uid("S1"),
                "SeriesInstanceUID": f"{series_uid('S1-CT')}\\{series_uid('S1-MR')}",
            },
        )

        assert keys_of(values(run, "SeriesInstanceUID"), SERIES_UIDS) == {"S1-CT", "S1-MR"}, (
            run.describe()
        )

    def test_related_instances_count(self, server: DicomvaultServer) -> None:
        run = find(
            server,
            "SERIES",
            {
                "StudyInstanceUID": study_uid("S1"),
                "SeriesInstanceUID": series_uid("S1-CT"),
                "NumberOfSeriesRelatedInstances": "",
            },
        )

        assert values(run, "NumberOfSeriesRelatedInstances") == ["3"], run.describe()


class TestImageLevel:
    """Study Root model, QueryRetrieveLevel IMAGE within series S1-CT."""

    def keys(self, **more: str) -> dict[str, str]:
        return {
            "StudyInstanceUID": study_uid("S1"),
            "SeriesInstanceUID": series_uid("S1-CT"),
            **more,
        }

    def test_universal(self, server: DicomvaultServer) -> None:
        run = find(server, "IMAGE", self.keys(SOPInstanceUID="", InstanceNumber="", SOPClassUID=""))

        expected = {instance_uid("S1-CT", number) for number in (1, 2, 3)}
        assert set(values(run, "SOPInstanceUID")) == expected, run.describe()
        assert sorted(values(run, "InstanceNumber")) == ["1", "2", "3"]
        assert set(values(run, "SOPClassUID")) == {CTImageStorage}

    def test_single_value(self, server: DicomvaultServer) -> None:
        run = find(server, "IMAGE", self.keys(InstanceNumber="2", SOPInstanceUID=""))

        assert values(run, "SOPInstanceUID") == [instance_uid("S1-CT", 2)], run.describe()

    def test_uid_list(self, server: DicomvaultServer) -> None:
        uids = [instance_uid("S1-CT", 1), instance_uid("S1-CT", 3)]
        run = find(server, "IMAGE", self.keys(SOPInstanceUID="\\".join(uids)))

        assert set(values(run, "SOPInstanceUID")) == set(uids), run.describe()


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param({"QueryRetrieveLevel": "FOO", "PatientID": ""}, id="unknown-level"),
        pytest.param(
            {"QueryRetrieveLevel": "STUDY", "StudyDate": "2020xx01", "StudyInstanceUID": ""},
            id="bad-date",
        ),
        pytest.param(
            {
                "QueryRetrieveLevel": "STUDY",
                "StudyDate": "20200101-20191301",
                "StudyInstanceUID": "",
            },
            id="bad-date-range",
        ),
    ],
)
def test_invalid_identifier_fails(server: DicomvaultServer, keys: dict[str, str]) -> None:
    run = findscu(server.port, keys, server.ae_title)

    assert run.status is not None, run.describe()
    assert run.status == 0xA900 or 0xC000 <= run.status <= 0xCFFF, (
        f"expected a failure status 0xA900 or 0xCxxx, got {format_status(run.status)}\n"
        + run.describe()
    )
    assert run.error_comment, run.describe()
    assert run.responses == [], run.describe()


# Person names in other character sets, from pydicom's charset_files.

CHARSET_FILES = bundled_files(PYDICOM_CHARSET_FILES)


@dataclasses.dataclass
class CharsetServer:
    server: DicomvaultServer
    # Patient ID: Patient's Name decoded by pydicom from the stored file.
    names: dict[str, str]
    workdir: Path


@pytest.fixture(scope="module")
def charset_server(
    start_module_server: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> CharsetServer:
    """A server holding the charset files that have all the UIDs an archive needs."""
    server = start_module_server()
    _store(server, [bundled.path for bundled in CHARSET_FILES])
    return CharsetServer(
        server, _decoded_names(CHARSET_FILES), tmp_path_factory.mktemp("charset-queries")
    )


def _decoded_names(files: list[BundledFile]) -> dict[str, str]:
    names = {}
    for bundled in files:
        ds = pydicom.dcmread(bundled.path, stop_before_pixels=True)
        names[str(ds.PatientID)] = str(ds.PatientName)
    return names


def _query_file(folder: Path, charset: list[str], pattern: str) -> Path:
    """Write a STUDY level identifier encoded by pydicom in `charset`."""
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = pattern
    ds.PatientID = ""
    ds.StudyInstanceUID = ""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = StudyRootQueryRetrieveInformationModelFind
    ds.file_meta.MediaStorageSOPInstanceUID = UID(make_uid("query", *charset, pattern))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / f"{ds.file_meta.MediaStorageSOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


CHARSET_CASES = [
    pytest.param(["ISO_IR 192"], "山田*", {"H31EXAMPLE", "H32EXAMPLE"}, id="japanese-utf8"),
    pytest.param(
        ["", "ISO 2022 IR 87"], "山田*", {"H31EXAMPLE", "H32EXAMPLE"}, id="japanese-iso2022"
    ),
    pytest.param(
        ["ISO_IR 192"],
        "やまだ^たろう",
        {"H31EXAMPLE", "H32EXAMPLE", "2008-4"},
        id="japanese-phonetic-utf8",
    ),
    pytest.param(["ISO_IR 192"], "김희중", {"2008-3"}, id="korean-utf8"),
    pytest.param(["", "ISO 2022 IR 149"], "김희중", {"2008-3"}, id="korean-iso2022"),
    pytest.param(["ISO_IR 192"], "王*", {"X1EXAMPLE", "X2EXAMPLE"}, id="chinese-utf8"),
    pytest.param(["ISO_IR 100"], "äneas^rüdiger", {"SCSGERM"}, id="german-latin1-lowercase"),
]


@pytest.mark.parametrize(("charset", "pattern", "expected"), CHARSET_CASES)
def test_name_in_charset_found(
    charset_server: CharsetServer, charset: list[str], pattern: str, expected: set[str]
) -> None:
    server = charset_server.server
    if charset == ["ISO_IR 192"]:
        # A UTF-8 value goes straight from the command line into the request.
        run = findscu(
            server.port,
            {
                "QueryRetrieveLevel": "STUDY",
                "SpecificCharacterSet": "ISO_IR 192",
                "PatientName": pattern,
                "PatientID": "",
                "StudyInstanceUID": "",
            },
            server.ae_title,
        )
    else:
        query = _query_file(charset_server.workdir, charset, pattern)
        run = findscu(server.port, {}, server.ae_title, query_file=query)

    assert run.status == SUCCESS, run.describe()
    assert set(values(run, "PatientID")) == expected, run.describe()
    for ds in run.responses:
        # pydicom decodes the name with the response's Specific Character Set.
        assert str(ds.PatientName) == charset_server.names[str(ds.PatientID)]
