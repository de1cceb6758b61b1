"""Console instance page: every tag of the stored file, and the image viewer."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicomvault.archive import Archive
from dicomvault.dicom.attributes import Level
from dicomvault.render import RenderError, Window, default_window, read_frame
from dicomvault.web.dicomweb.resources import find_instances, open_instance
from dicomvault.web.search_results import list_sorted
from dicomvault.web.ui.browse import checked_uids, not_found_page
from dicomvault.web.ui.rendering import CONSOLE_PREFIX, ConsoleSession, render_page
from dicomvault.web.ui.tag_dump import TagRow, dump

LOGGER = logging.getLogger(__name__)

router = APIRouter(prefix=CONSOLE_PREFIX, include_in_schema=False)


def _format_number(value: float) -> str:
    return f"{value:g}"


@router.get("/studies/{study}/series/{series}/instances/{instance}")
def instance_page(
    study: str, series: str, instance: str, request: Request, session: ConsoleSession
) -> HTMLResponse:
    """Show an instance: the viewer (for images) and a table of all its elements.

    The table lists the File Meta Information and the dataset as stored,
    except Pixel Data, which the viewer shows.
    """
    archive: Archive = request.app.state.archive
    conditions = tuple(
        checked_uids(StudyInstanceUID=study, SeriesInstanceUID=series, SOPInstanceUID=instance)
    )
    found = list_sorted(archive, Level.IMAGE, conditions).matches
    if not found:
        return not_found_page(request, session, f"No instance {instance} is stored.")
    ref = find_instances(archive, study, series, instance)[0]

    window: Window | None = None
    render_problem = ""
    try:
        with open_instance(archive, ref) as stream:
            ds = dcmread(stream, stop_before_pixels=True)
            has_image = "Rows" in ds and "Columns" in ds
            if has_image:
                try:
                    window = default_window(*read_frame(stream, 0))
                except RenderError as exc:
                    render_problem = str(exc)
    except (InvalidDicomError, OSError) as exc:
        LOGGER.error("Cannot read stored file %s of %s: %s", ref.storage_key, instance, exc)
        return not_found_page(request, session, f"The stored file of {instance} cannot be read.")
    meta_rows: tuple[TagRow, ...] = dump(ds.file_meta) if ds.file_meta else ()

    context = {
        "instance": found[0],
        "study_uid": study,
        "series_uid": series,
        "instance_uid": instance,
        "meta_rows": meta_rows,
        "rows": dump(ds),
        "has_image": has_image,
        "render_problem": render_problem,
        "frames": ref.number_of_frames,
        "window_center": _format_number(window.center) if window else "",
        "window_width": _format_number(window.width) if window else "",
        "image_base": (
            f"{CONSOLE_PREFIX}/images/studies/{study}/series/{series}/instances/{instance}/frames"
        ),
    }
    return render_page(request, "instance.html", session, context)
