"""Helpers shared by the admin pages: full page or htmx fragment, and number formats."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Request, status
from fastapi.responses import HTMLResponse

from dicomvault.index.users import Session
from dicomvault.web.ui.rendering import CONSOLE_PREFIX, render_page

ADMIN_PREFIX = f"{CONSOLE_PREFIX}/admin"

_BYTE_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB")


def is_htmx(request: Request) -> bool:
    """Return True for a request that htmx sent, which expects a fragment."""
    return request.headers.get("HX-Request") == "true"


def render_panel(
    request: Request,
    page: str,
    panel: str,
    session: Session,
    context: Mapping[str, Any],
    error_status: int | None = None,
) -> HTMLResponse:
    """Render ``panel`` for an htmx request, else the full ``page`` that includes it.

    htmx swaps only 2xx responses by default, so a panel that shows an
    error is sent with 200; the full page gets ``error_status`` (such as
    422) when it shows one.
    """
    if is_htmx(request):
        return render_page(request, panel, session, context)
    code = error_status if error_status is not None else status.HTTP_200_OK
    return render_page(request, page, session, context, status_code=code)


def format_bytes(size: int) -> str:
    """Format a byte count with a binary unit, such as '1.5 GiB' or '512 bytes'."""
    value = float(size)
    for unit in _BYTE_UNITS:
        if value < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable: the last unit returns")
