"""Console drill-down pages: a patient's studies, a study's series, a series' instances."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse

from dicomvault.archive import Archive
from dicomvault.dicom.attributes import Level
from dicomvault.dicom.matching import Condition, MatchKind
from dicomvault.index.users import Session
from dicomvault.web.dicomweb.resources import check_uid
from dicomvault.web.search_results import list_sorted
from dicomvault.web.ui.rendering import CONSOLE_PREFIX, ConsoleSession, render_page

LOGGER = logging.getLogger(__name__)

router = APIRouter(prefix=CONSOLE_PREFIX, include_in_schema=False)


def single_value(keyword: str, vr: str, value: str) -> Condition:
    """Return a condition that matches ``value`` exactly, wildcard characters included."""
    return Condition(keyword, vr, MatchKind.SINGLE, value=value)


def not_found_page(request: Request, session: Session, message: str) -> HTMLResponse:
    """Return the 404 page with ``message``."""
    return render_page(
        request,
        "error.html",
        session,
        {"title": "Not found", "message": message},
        status_code=status.HTTP_404_NOT_FOUND,
    )


def checked_uids(**uids: str) -> list[Condition]:
    """Return a condition per UID, in the order given.

    Raises
    ------
    HTTPException
        400 if a value is not a UID.
    """
    return [
        single_value(keyword, "UI", check_uid(keyword, value)) for keyword, value in uids.items()
    ]


def _archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


@router.get("/patients")
def patient_page(request: Request, session: ConsoleSession, id: str = "") -> HTMLResponse:
    """Show a patient, by Patient ID, and their studies, newest first."""
    if not id:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Give the Patient ID as ?id=...")
    condition = (single_value("PatientID", "LO", id),)
    patients = list_sorted(_archive(request), Level.PATIENT, condition).matches
    if not patients:
        return not_found_page(request, session, f"No patient with Patient ID {id!r} is stored.")
    studies = list_sorted(_archive(request), Level.STUDY, condition, sort="-StudyDate").matches
    context: dict[str, Any] = {"patient": patients[0], "patients": patients, "studies": studies}
    return render_page(request, "patient.html", session, context)


@router.get("/studies/{study}")
def study_page(study: str, request: Request, session: ConsoleSession) -> HTMLResponse:
    """Show a study and its series, each with a thumbnail."""
    conditions = tuple(checked_uids(StudyInstanceUID=study))
    studies = list_sorted(_archive(request), Level.STUDY, conditions).matches
    if not studies:
        return not_found_page(request, session, f"No study {study} is stored.")
    series = list_sorted(_archive(request), Level.SERIES, conditions, sort="SeriesNumber").matches
    context = {"study": studies[0], "series_list": series, "study_uid": study}
    return render_page(request, "study.html", session, context)


@router.get("/studies/{study}/series/{series}")
def series_page(study: str, series: str, request: Request, session: ConsoleSession) -> HTMLResponse:
    """Show a series and its instances in Instance Number order."""
    conditions = tuple(checked_uids(StudyInstanceUID=study, SeriesInstanceUID=series))
    found = list_sorted(_archive(request), Level.SERIES, conditions).matches
    if not found:
        return not_found_page(request, session, f"No series {series} is stored in study {study}.")
    instances = list_sorted(
        _archive(request), Level.IMAGE, conditions, sort="InstanceNumber"
    ).matches
    context = {
        "series": found[0],
        "instances": instances,
        "study_uid": study,
        "series_uid": series,
    }
    return render_page(request, "series.html", session, context)
