"""Attributes the index keeps as columns per Query/Retrieve level, and computed ones."""

from __future__ import annotations

import dataclasses
import enum
import functools

from pydicom.datadict import dictionary_VR, tag_for_keyword


class Level(enum.IntEnum):
    """Query/Retrieve levels, ordered from the top of the hierarchy down."""

    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3

    @classmethod
    def from_dicom(cls, value: str) -> Level:
        """Return the level for a Query/Retrieve Level (0008,0052) value.

        Raises
        ------
        ValueError
            If the value is not PATIENT, STUDY, SERIES or IMAGE.
        """
        text = value.strip().upper()
        try:
            return cls[text]
        except KeyError:
            raise ValueError(
                f"Query/Retrieve Level (0008,0052) must be PATIENT, STUDY, SERIES or IMAGE, "
                f"got '{value}'"
            ) from None


@dataclasses.dataclass(frozen=True)
class ColumnAttribute:
    """An attribute stored as a column of a level's table.

    ``match_column`` is a second column holding a normalized form used for
    SQL matching (upper-case person names, zero-padded times); None when the
    value column itself is used.
    """

    keyword: str
    level: Level
    column: str
    match_column: str | None = None

    # Cached: the index writer reads these for every column of every instance.
    @functools.cached_property
    def tag(self) -> int:
        """The attribute's tag as an integer."""
        tag = tag_for_keyword(self.keyword)
        assert tag is not None, self.keyword
        return int(tag)

    @functools.cached_property
    def vr(self) -> str:
        """The attribute's VR from the data dictionary."""
        return str(dictionary_VR(self.tag))


def _columns(level: Level, *specs: tuple[str, str] | tuple[str, str, str]) -> list[ColumnAttribute]:
    return [ColumnAttribute(spec[0], level, spec[1], *spec[2:]) for spec in specs]


COLUMN_ATTRIBUTES: tuple[ColumnAttribute, ...] = (
    *_columns(
        Level.PATIENT,
        ("PatientID", "patient_id"),
        ("IssuerOfPatientID", "issuer_of_patient_id"),
        ("PatientName", "patient_name", "patient_name_match"),
        ("PatientBirthDate", "patient_birth_date"),
        ("PatientSex", "patient_sex"),
    ),
    *_columns(
        Level.STUDY,
        ("StudyInstanceUID", "study_instance_uid"),
        ("StudyDate", "study_date"),
        ("StudyTime", "study_time", "study_time_match"),
        ("AccessionNumber", "accession_number"),
        ("StudyID", "study_id"),
        ("StudyDescription", "study_description"),
        ("ReferringPhysicianName", "referring_physician_name", "referring_physician_name_match"),
    ),
    *_columns(
        Level.SERIES,
        ("SeriesInstanceUID", "series_instance_uid"),
        ("Modality", "modality"),
        ("SeriesNumber", "series_number"),
        ("SeriesDescription", "series_description"),
        ("SeriesDate", "series_date"),
        ("SeriesTime", "series_time", "series_time_match"),
        ("BodyPartExamined", "body_part_examined"),
        ("ProtocolName", "protocol_name"),
    ),
    *_columns(
        Level.IMAGE,
        ("SOPInstanceUID", "sop_instance_uid"),
        ("SOPClassUID", "sop_class_uid"),
        ("InstanceNumber", "instance_number"),
        ("ContentDate", "content_date"),
        ("ContentTime", "content_time", "content_time_match"),
        ("AcquisitionDateTime", "acquisition_datetime", "acquisition_datetime_match"),
        ("NumberOfFrames", "number_of_frames"),
    ),
)

COLUMN_BY_KEYWORD: dict[str, ColumnAttribute] = {a.keyword: a for a in COLUMN_ATTRIBUTES}

UNIQUE_KEYS: dict[Level, str] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}

# Attributes the archive computes from the hierarchy (PS3.4 C.3.4, C.6.1.1.x)
# and the lowest level at which each one is meaningful, paired with the level
# of the entity it describes.
COMPUTED_ATTRIBUTES: dict[str, Level] = {
    "NumberOfPatientRelatedStudies": Level.PATIENT,
    "NumberOfPatientRelatedSeries": Level.PATIENT,
    "NumberOfPatientRelatedInstances": Level.PATIENT,
    "NumberOfStudyRelatedSeries": Level.STUDY,
    "NumberOfStudyRelatedInstances": Level.STUDY,
    "ModalitiesInStudy": Level.STUDY,
    "SOPClassesInStudy": Level.STUDY,
    "NumberOfSeriesRelatedInstances": Level.SERIES,
}

# Identifier elements that are not attributes of the matched entities. The
# responder fills them itself: QIDO-RS returns the entity's WADO-RS URL as
# RetrieveURL, so the index never reads stored headers to look for it.
CONTROL_KEYWORDS = frozenset(
    {
        "QueryRetrieveLevel",
        "SpecificCharacterSet",
        "RetrieveAETitle",
        "RetrieveURL",
        "InstanceAvailability",
        "TimezoneOffsetFromUTC",
    }
)


def level_of_keyword(keyword: str) -> Level | None:
    """Return the level whose table contains ``keyword``, or None if it has no column."""
    column = COLUMN_BY_KEYWORD.get(keyword)
    if column is not None:
        return column.level
    return COMPUTED_ATTRIBUTES.get(keyword)
