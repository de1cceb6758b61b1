"""Deterministic DICOM corpus for the benchmarks: patients, studies, series and instances.

The same seed and scale always give the same files, byte for byte: names,
identifiers, dates, UIDs and pixel values all come from random generators
seeded with the corpus seed and the patient's index. Headers look like a
hospital's: Latin-1, Greek, Cyrillic and Japanese names with the matching
Specific Character Set, studies spread over eight years, and six modalities
with their own SOP classes and image sizes.

Use it as a library (:func:`write_corpus`) or from the command line::

    python bench/corpus.py --out /tmp/corpus --patients 20 --instances-per-series 25

Each study takes its modality from a fixed schedule (:data:`MODALITY_SCHEDULE`),
so the mix of modalities, and the mean file size, stay the same at any scale.
With the default layout the mean instance is about 139 KB (140 KB measured
for the 2,000-instance ingest set of bench/run.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.encoders.base import (
    JPEG2000LosslessEncoder,
    JPEGLSLosslessEncoder,
    RLELosslessEncoder,
)
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
    RLELossless,
    UltrasoundImageStorage,
    generate_uid,
)

# pydicom's UID root, under which UIDs derived from entropy sources are unique to their sources.
UID_PREFIX = "1.2.826.0.1.3680043.8.498."
MANIFEST_NAME = "manifest.json"
SMALL_PIXELS = 16
FIRST_STUDY_DATE = datetime.date(2018, 1, 1)
LAST_STUDY_DATE = datetime.date(2025, 12, 31)

# Compression name -> (transfer syntax, encoder) for --compression.
COMPRESSIONS = {
    "rle": (RLELossless, RLELosslessEncoder),
    "jpeg2000": (JPEG2000Lossless, JPEG2000LosslessEncoder),
    "jpegls": (JPEGLSLossless, JPEGLSLosslessEncoder),
}
# storescu 3.6.7 proposes only uncompressed transfer syntaxes unless an option names another one.
STORESCU_PROPOSAL_OPTIONS = {"rle": "-xr", "jpeg2000": "-xv", "jpegls": "-xt"}


@dataclasses.dataclass(frozen=True)
class Modality:
    """Image geometry, SOP class and descriptions of one modality.

    ``max_instances_per_series`` caps the corpus-wide instances per series,
    because a radiograph series contains one view and an ultrasound series
    a few single-frame images.
    """

    name: str
    sop_class_uid: UID
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    samples_per_pixel: int
    max_instances_per_series: int | None
    study_descriptions: tuple[str, ...]
    series_descriptions: tuple[str, ...]
    body_parts: tuple[str, ...]


MODALITIES = {
    modality.name: modality
    for modality in (
        Modality(
            "CT", CTImageStorage, 512, 512, 16, 12, 1, None,
            ("CT CHEST W/O CONTRAST", "CT ABDOMEN PELVIS W CONTRAST", "CT HEAD"),
            ("AXIAL 5MM", "AXIAL 1.25MM", "CORONAL MPR"),
            ("CHEST", "ABDOMEN", "HEAD"),
        ),
        Modality(
            "MR", MRImageStorage, 256, 256, 16, 12, 1, None,
            ("MR BRAIN W/O CONTRAST", "MR KNEE LEFT", "MR LUMBAR SPINE"),
            ("T1 SAG", "T2 AX", "FLAIR AX", "DWI"),
            ("BRAIN", "KNEE", "LSPINE"),
        ),
        Modality(
            "PT", PositronEmissionTomographyImageStorage, 128, 128, 16, 16, 1, None,
            ("PET CT WHOLE BODY FDG",), ("PET AC", "PET NAC"), ("WHOLEBODY",),
        ),
        Modality(
            "US", UltrasoundImageStorage, 240, 320, 8, 8, 3, 4,
            ("US ABDOMEN COMPLETE", "US THYROID"), ("B-MODE", "DOPPLER"),
            ("ABDOMEN", "NECK"),
        ),
        Modality(
            "CR", ComputedRadiographyImageStorage, 1760, 1760, 16, 12, 1, 1,
            ("XR CHEST 2 VIEWS", "XR HAND LEFT"), ("PA", "LATERAL"), ("CHEST", "HAND"),
        ),
        Modality(
            "DX", DigitalXRayImageStorageForPresentation, 2048, 2048, 16, 14, 1, 1,
            ("XR PELVIS AP", "XR KNEE RIGHT"), ("AP", "LATERAL"), ("PELVIS", "KNEE"),
        ),
    )
}  # fmt: skip

# Studies per modality in each cycle of 40 studies. MR and PT series
# dominate, which gives the 139 KB mean of a CT/MR ingest set; CT, US and
# radiographs are few but large.
STUDIES_PER_CYCLE = {"MR": 22, "PT": 11, "CT": 2, "US": 3, "CR": 1, "DX": 1}


def _interleave(counts: dict[str, int]) -> tuple[str, ...]:
    """Spread each name evenly over a cycle: {"A": 2, "B": 1} gives ("A", "B", "A")."""
    slots = [
        ((position + 0.5) / count, name)
        for name, count in counts.items()
        for position in range(count)
    ]
    return tuple(name for _slot, name in sorted(slots))


# The modality of study number k is MODALITY_SCHEDULE[k % 40].
MODALITY_SCHEDULE = _interleave(STUDIES_PER_CYCLE)


@dataclasses.dataclass(frozen=True)
class NamePool:
    """Patient names of one script, with the Specific Character Set they need.

    Each name is a DICOM PN value: family^given, with ideographic and
    phonetic component groups after "=" where the script has them.
    """

    specific_character_set: str | None
    weight: int
    names: tuple[str, ...]


NAME_POOLS = (
    NamePool(
        None,
        55,
        tuple(
            f"{family}^{given}"
            for family in (
                "Anderson", "Adams", "Allen", "Brown", "Clark", "Davis", "Evans", "Harris",
                "Johnson", "King", "Lopez", "Miller", "Nguyen", "Patel", "Roberts", "Smith",
                "Taylor", "Walker", "Young", "Okafor",
            )
            for given in ("James", "Mary", "Robert", "Linda", "Alice", "Omar", "Priya", "Wei")
        ),
    ),
    NamePool(
        "ISO_IR 100",
        20,
        tuple(
            f"{family}^{given}"
            for family in (
                "Müller", "Schäfer", "Åström", "Núñez", "Peña", "Lefèvre", "Ørsted",
                "Sjöberg", "Gonçalves", "Ibáñez", "Aubé", "Ødegård",
            )
            for given in ("François", "José", "Zoë", "Jürgen", "Inês", "Søren", "Agnès", "Björn")
        ),
    ),
    NamePool(
        "ISO_IR 192",
        8,
        tuple(
            f"{family}^{given}"
            for family in ("Παπαδόπουλος", "Αντωνίου", "Γεωργίου", "Δημητρίου", "Κωνσταντίνου")
            for given in ("Γιάννης", "Μαρία", "Ελένη", "Νίκος", "Δήμητρα")
        ),
    ),
    NamePool(
        "ISO_IR 192",
        7,
        tuple(
            f"{family}^{given}"
            for family in ("Иванов", "Смирнов", "Кузнецов", "Андреев", "Соколов")
            for given in ("Пётр", "Анна", "Алексей", "Ольга", "Дмитрий")
        ),
    ),
    NamePool(
        "ISO_IR 192",
        10,
        tuple(
            f"{fr}^{gr}={fi}^{gi}={fp}^{gp}"
            for fr, fi, fp in (
                ("Yamada", "山田", "やまだ"),
                ("Suzuki", "鈴木", "すずき"),
                ("Tanaka", "田中", "たなか"),
                ("Sato", "佐藤", "さとう"),
                ("Ando", "安藤", "あんどう"),
                ("Ito", "伊藤", "いとう"),
            )
            for gr, gi, gp in (
                ("Tarou", "太郎", "たろう"),
                ("Hanako", "花子", "はなこ"),
                ("Kenji", "健二", "けんじ"),
                ("Akiko", "明子", "あきこ"),
            )
        ),
    ),
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """The scale and options of a corpus.

    Attributes
    ----------
    patients, studies_per_patient, series_per_study, instances_per_series : int
        The layout. Radiograph series contain one instance and ultrasound
        series at most four, whatever the value of ``instances_per_series``.
    max_instances : int, optional
        Stop after this many instances, in patient order, even in the middle
        of a series. The layout must then hold at least this many.
    seed : int
        Seed of every random choice; the same spec writes the same bytes.
    small_pixels : bool
        Write 16 x 16 images of each modality's pixel format, to build large
        indexes fast; headers stay the same.
    compression : str, optional
        "rle", "jpeg2000" or "jpegls" to encode the pixel data losslessly;
        None writes Explicit VR Little Endian.
    modalities : tuple of str, optional
        Use only these modalities, in the schedule's order; None uses all.
    first_patient_number : int
        Number in the Patient ID of the first patient (MRN0000001 for 1), so
        that corpora written side by side can have distinct patients.
    """

    patients: int
    studies_per_patient: int = 2
    series_per_study: int = 2
    instances_per_series: int = 25
    max_instances: int | None = None
    seed: int = 1
    small_pixels: bool = False
    compression: str | None = None
    modalities: tuple[str, ...] | None = None
    first_patient_number: int = 1

    def __post_init__(self) -> None:
        for name in ("patients", "studies_per_patient", "series_per_study", "instances_per_series"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"'{name}' must be at least 1, got {value}")
        if self.max_instances is not None and self.max_instances < 1:
            raise ValueError(f"'max_instances' must be at least 1, got {self.max_instances}")
        if self.compression is not None and self.compression not in COMPRESSIONS:
            raise ValueError(
                f"'compression' must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}"
            )
        unknown = set(self.modalities or ()) - set(MODALITIES)
        if unknown:
            raise ValueError(
                f"unknown modalities {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(MODALITIES)}"
            )

    def schedule(self) -> tuple[str, ...]:
        """Return the modality schedule, restricted to :attr:`modalities` when given."""
        if self.modalities is None:
            return MODALITY_SCHEDULE
        kept = tuple(name for name in MODALITY_SCHEDULE if name in self.modalities)
        return kept or tuple(self.modalities)


@dataclasses.dataclass
class SeriesSummary:
    """One written series, with what a query against it should match."""

    patient_id: str
    patient_name: str
    specific_character_set: str | None
    study_instance_uid: str
    study_date: str
    series_instance_uid: str
    modality: str
    instances: int


@dataclasses.dataclass
class Corpus:
    """A written corpus: its folder, its spec and a summary per series."""

    folder: Path
    spec: CorpusSpec
    series: list[SeriesSummary]
    total_bytes: int

    @property
    def instances(self) -> int:
        """Number of instance files written."""
        return sum(series.instances for series in self.series)

    @property
    def mean_instance_kb(self) -> float:
        """Mean file size in kB (1,000 bytes)."""
        return self.total_bytes / max(self.instances, 1) / 1000

    def files(self) -> list[Path]:
        """List the instance files, sorted by path (patient, study, series, instance)."""
        return sorted(self.folder.rglob("*.dcm"))


@dataclasses.dataclass(frozen=True)
class _PatientPlan:
    index: int
    # For each study: its modality and the instance count of each series.
    studies: tuple[tuple[str, tuple[int, ...]], ...]


def plan_corpus(spec: CorpusSpec) -> list[_PatientPlan]:
    """Decide the modality and the instance counts of every study, without randomness.

    Raises
    ------
    ValueError
        If ``spec.max_instances`` is more than the layout contains.
    """
    schedule = spec.schedule()
    remaining = spec.max_instances
    plans = []
    for patient in range(spec.patients):
        studies = []
        for study in range(spec.studies_per_patient):
            modality = MODALITIES[
                schedule[(patient * spec.studies_per_patient + study) % len(schedule)]
            ]
            per_series = spec.instances_per_series
            if modality.max_instances_per_series is not None:
                per_series = min(per_series, modality.max_instances_per_series)
            counts = []
            for _ in range(spec.series_per_study):
                count = per_series if remaining is None else min(per_series, remaining)
                if count == 0:
                    break
                counts.append(count)
                if remaining is not None:
                    remaining -= count
            if counts:
                studies.append((modality.name, tuple(counts)))
        if studies:
            plans.append(_PatientPlan(patient, tuple(studies)))
    if spec.max_instances is not None and remaining:
        raise ValueError(
            f"invalid max_instances={spec.max_instances}: the layout contains only "
            f"{spec.max_instances - remaining} instances; add patients or instances per series"
        )
    return plans


def write_corpus(spec: CorpusSpec, folder: Path, workers: int | None = None) -> Corpus:
    """Write the corpus of `spec` under `folder` and a manifest.json beside the files.

    Files go to ``folder/<PatientID>/<study>/<series>/<instance>.dcm``.
    Patients are written in parallel by `workers` processes (default: one
    per CPU); the output does not depend on their number.

    Raises
    ------
    ValueError
        If the spec is invalid, or its compression has no encoder installed.
    FileExistsError
        If `folder` exists and is not empty.
    """
    if spec.compression is not None:
        _syntax, encoder = COMPRESSIONS[spec.compression]
        if not encoder.is_available:
            raise ValueError(
                f"no encoder for {encoder.UID.name} is installed; "
                f"install one of: {', '.join(encoder.missing_dependencies) or 'pyjpegls'}"
            )
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"corpus folder {folder} is not empty; choose a new one")
    folder.mkdir(parents=True, exist_ok=True)

    plans = plan_corpus(spec)
    workers = workers or os.cpu_count() or 1
    series: list[SeriesSummary] = []
    total_bytes = 0
    if workers == 1:
        results = [_write_patient(spec, plan, folder) for plan in plans]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(
                pool.map(_write_patient, [spec] * len(plans), plans, [folder] * len(plans))
            )
    for patient_series, patient_bytes in results:
        series.extend(patient_series)
        total_bytes += patient_bytes

    corpus = Corpus(folder, spec, series, total_bytes)
    _write_manifest(corpus)
    return corpus


def _write_manifest(corpus: Corpus) -> None:
    manifest = {
        "spec": dataclasses.asdict(corpus.spec),
        "instances": corpus.instances,
        "total_bytes": corpus.total_bytes,
        "series": [dataclasses.asdict(series) for series in corpus.series],
    }
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    (corpus.folder / MANIFEST_NAME).write_text(text, encoding="utf-8")


def _uid(spec: CorpusSpec, *parts: object) -> str:
    # pydicom joins the entropy sources without a separator, so the parts are
    # joined here with one: ("1", "12") and ("11", "2") must give different UIDs.
    key = "/".join(map(str, (spec.seed, *parts)))
    return str(generate_uid(prefix=UID_PREFIX, entropy_srcs=[key]))


def _write_patient(
    spec: CorpusSpec, plan: _PatientPlan, folder: Path
) -> tuple[list[SeriesSummary], int]:
    """Write every instance of one patient; return its series and the bytes written."""
    rng = np.random.default_rng([spec.seed, plan.index])
    patient = _patient_dataset(rng, plan.index + spec.first_patient_number)
    summaries = []
    written = 0
    study_dates = sorted(_random_date(rng, FIRST_STUDY_DATE, LAST_STUDY_DATE) for _ in plan.studies)

    for study_number, ((modality_name, counts), study_date) in enumerate(
        zip(plan.studies, study_dates, strict=True), start=1
    ):
        modality = MODALITIES[modality_name]
        study = _study_dataset(spec, rng, plan.index, study_number, modality, study_date)
        for series_number, count in enumerate(counts, start=1):
            series = _series_dataset(spec, rng, plan.index, study_number, series_number, modality)
            pixels = _PixelSource(rng, modality, spec.small_pixels)
            for instance_number in range(1, count + 1):
                ds = Dataset()
                ds.update(patient)
                ds.update(study)
                ds.update(series)
                _add_instance(spec, ds, modality, instance_number, (plan.index, study_number))
                _add_pixels(ds, modality, pixels.image(instance_number), spec.compression)
                path = (
                    folder
                    / patient.PatientID
                    / f"{study_number:02d}"
                    / f"{series_number:02d}"
                    / f"{instance_number:04d}.dcm"
                )
                written += _save(ds, path, spec.compression)
            summaries.append(
                SeriesSummary(
                    patient_id=patient.PatientID,
                    patient_name=str(patient.PatientName),
                    specific_character_set=patient.get("SpecificCharacterSet"),
                    study_instance_uid=study.StudyInstanceUID,
                    study_date=study.StudyDate,
                    series_instance_uid=series.SeriesInstanceUID,
                    modality=modality.name,
                    instances=count,
                )
            )
    return summaries, written


def _random_date(
    rng: np.random.Generator, first: datetime.date, last: datetime.date
) -> datetime.date:
    return first + datetime.timedelta(days=int(rng.integers(0, (last - first).days + 1)))


def _random_time(rng: np.random.Generator) -> str:
    seconds = int(rng.integers(7 * 3600, 20 * 3600))
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def _patient_dataset(rng: np.random.Generator, number: int) -> Dataset:
    weights = np.array([pool.weight for pool in NAME_POOLS], dtype=float)
    pool = NAME_POOLS[int(rng.choice(len(NAME_POOLS), p=weights / weights.sum()))]
    ds = Dataset()
    if pool.specific_character_set is not None:
        ds.SpecificCharacterSet = pool.specific_character_set
    ds.PatientName = pool.names[int(rng.integers(len(pool.names)))]
    ds.PatientID = f"MRN{number:07d}"
    ds.IssuerOfPatientID = "DICOMVAULT-BENCH"
    birth = _random_date(rng, datetime.date(1930, 1, 1), datetime.date(2015, 12, 31))
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = str(rng.choice(["F", "M", "F", "M", "O"]))
    return ds


def _study_dataset(
    spec: CorpusSpec,
    rng: np.random.Generator,
    patient: int,
    study_number: int,
    modality: Modality,
    date: datetime.date,
) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = _uid(spec, "study", patient, study_number)
    ds.StudyDate = date.strftime("%Y%m%d")
    ds.StudyTime = _random_time(rng)
    ds.AccessionNumber = f"ACC{int(rng.integers(10**8)):08d}"
    ds.StudyID = str(study_number)
    ds.StudyDescription = str(rng.choice(modality.study_descriptions))
    ds.ReferringPhysicianName = str(
        rng.choice(["Grey^Meredith", "House^Gregory", "Quinn^Michaela"])
    )
    ds.InstitutionName = "Bench General Hospital"
    return ds


def _series_dataset(
    spec: CorpusSpec,
    rng: np.random.Generator,
    patient: int,
    study_number: int,
    series_number: int,
    modality: Modality,
) -> Dataset:
    ds = Dataset()
    ds.SeriesInstanceUID = _uid(spec, "series", patient, study_number, series_number)
    ds.SeriesNumber = series_number
    ds.Modality = modality.name
    ds.SeriesDescription = str(rng.choice(modality.series_descriptions))
    ds.BodyPartExamined = str(rng.choice(modality.body_parts))
    ds.Manufacturer = "DICOMVAULT BENCH"
    ds.FrameOfReferenceUID = _uid(spec, "frame", patient, study_number, series_number)
    return ds


def _add_instance(
    spec: CorpusSpec,
    ds: Dataset,
    modality: Modality,
    instance_number: int,
    study_key: tuple[int, int],
) -> None:
    ds.SOPClassUID = modality.sop_class_uid
    ds.SOPInstanceUID = _uid(spec, "instance", *study_key, ds.SeriesNumber, instance_number)
    ds.InstanceNumber = instance_number
    ds.AcquisitionNumber = 1
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if modality.name in ("CT", "MR", "PT") else ""]
    if modality.name in ("CT", "MR", "PT"):
        ds.SliceThickness = "2.5"
        ds.ImagePositionPatient = ["-250", "-250", f"{instance_number * 2.5:.1f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = ["0.9765625", "0.9765625"]
    if modality.name == "CT":
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.KVP = "120"


class _PixelSource:
    """Images of one series: a smooth phantom per series, shifted and noisy per instance.

    Smooth images compress like real ones, where random values would not compress at all.
    """

    def __init__(self, rng: np.random.Generator, modality: Modality, small: bool) -> None:
        self.rng = rng
        self.modality = modality
        self.rows = SMALL_PIXELS if small else modality.rows
        self.columns = SMALL_PIXELS if small else modality.columns
        y, x = np.mgrid[-1 : 1 : self.rows * 1j, -1 : 1 : self.columns * 1j]
        centre_y, centre_x = rng.uniform(-0.2, 0.2, 2)
        radius = np.hypot((y - centre_y) / 0.8, (x - centre_x) / 0.65)
        self.phantom = np.clip(1.2 - radius, 0.0, 1.0)
        self.maximum = (1 << modality.bits_stored) - 1

    def image(self, instance_number: int) -> np.ndarray[Any, np.dtype[Any]]:
        """Return the pixel array of one instance, in the modality's pixel format."""
        scale = 0.6 + 0.3 * np.sin(instance_number / 7.0)
        noise = self.rng.integers(0, max(self.maximum // 64, 2), (self.rows, self.columns))
        gray = np.clip(self.phantom * scale * self.maximum + noise, 0, self.maximum)
        if self.modality.samples_per_pixel == 3:
            rgb = np.stack([gray, gray * 0.8, gray * 0.6], axis=-1)
            return np.asarray(rgb, dtype=np.uint8)
        return np.asarray(gray, dtype=np.uint16)


def _add_pixels(
    ds: Dataset, modality: Modality, pixels: np.ndarray, compression: str | None
) -> None:
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = modality.samples_per_pixel
    ds.BitsAllocated = modality.bits_allocated
    ds.BitsStored = modality.bits_stored
    ds.HighBit = modality.bits_stored - 1
    ds.PixelRepresentation = 0
    if modality.samples_per_pixel == 3:
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    else:
        ds.PhotometricInterpretation = "MONOCHROME2"
    if compression is None:
        ds.PixelData = pixels.tobytes()
        return
    syntax, _encoder = COMPRESSIONS[compression]
    ds.compress(syntax, pixels, generate_instance_uid=False)


def _save(ds: Dataset, path: Path, compression: str | None) -> int:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = (
        ExplicitVRLittleEndian if compression is None else COMPRESSIONS[compression][0]
    )
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path.stat().st_size


def read_manifest(folder: Path) -> Corpus:
    """Load a corpus written by :func:`write_corpus` from its manifest.json."""
    manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    spec_values = dict(manifest["spec"])
    if spec_values.get("modalities") is not None:
        spec_values["modalities"] = tuple(spec_values["modalities"])
    series = [SeriesSummary(**values) for values in manifest["series"]]
    return Corpus(folder, CorpusSpec(**spec_values), series, manifest["total_bytes"])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line of the corpus generator."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="new or empty output folder")
    parser.add_argument("--patients", type=int, required=True, help="number of patients")
    parser.add_argument("--studies-per-patient", type=int, default=2)
    parser.add_argument("--series-per-study", type=int, default=2)
    parser.add_argument("--instances-per-series", type=int, default=25)
    parser.add_argument("--max-instances", type=int, help="stop after this many instances in total")
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice")
    parser.add_argument(
        "--small-pixels", action="store_true", help="16 x 16 images, for large indexes"
    )
    parser.add_argument(
        "--compression", choices=sorted(COMPRESSIONS), help="encode pixel data losslessly"
    )
    parser.add_argument(
        "--modality", action="append", choices=sorted(MODALITIES), help="use only these (repeat)"
    )
    parser.add_argument("--workers", type=int, help="writer processes (default: one per CPU)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Write a corpus from command line options and print its size."""
    args = parse_args(argv)
    try:
        spec = CorpusSpec(
            patients=args.patients,
            studies_per_patient=args.studies_per_patient,
            series_per_study=args.series_per_study,
            instances_per_series=args.instances_per_series,
            max_instances=args.max_instances,
            seed=args.seed,
            small_pixels=args.small_pixels,
            compression=args.compression,
            modalities=tuple(args.modality) if args.modality else None,
        )
        corpus = write_corpus(spec, args.out, workers=args.workers)
    except (ValueError, FileExistsError) as exc:
        print(f"corpus.py: {exc}", file=sys.stderr)
        return 2
    print(
        f"Wrote {corpus.instances} instances in {len(corpus.series)} series to {args.out}, "
        f"{corpus.total_bytes / 1e6:.1f} MB, mean {corpus.mean_instance_kb:.0f} kB per instance"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
