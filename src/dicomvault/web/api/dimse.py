"""REST API of the DIMSE service settings: read, change while running, reset (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import SQLAlchemyError

from dicomvault.audit import AuditAction, AuditEventType
from dicomvault.dimse.service import DimseService, DimseStatus, ListenError
from dicomvault.web.audit_events import publish_audit
from dicomvault.web.identity import AdminUser

router = APIRouter(prefix="/api/dimse", tags=["DIMSE service"])


class DimseServiceInfo(BaseModel):
    """The DIMSE service's settings and state."""

    ae_title: str
    host: str = Field(description="IP address the service listens on.")
    port: int
    allowed_calling_ae_titles: list[str] = Field(description="Empty: any calling AE title.")
    unknown_callers: str = Field(
        description="Policy for calling AE titles that are not registered nodes: accept, "
        "reject, echo, or permissions separated by commas (store, query, retrieve)."
    )
    running: bool = Field(description="False when this server process runs no DIMSE service.")
    open_associations: int | None = Field(description="Established associations; null if unknown.")
    sources: dict[str, str] = Field(
        description="Where each setting came from: default, file, environment, command line "
        "or index database (saved through this API)."
    )


class DimseSettingsChange(BaseModel):
    """Settings to change; PATCH takes any of them, PUT needs all."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    allowed_calling_ae_titles: list[str] | None = None
    unknown_callers: str | list[str] | None = None


def dimse_service(request: Request) -> DimseService:
    """Return the application's DIMSE service control."""
    service: DimseService = request.app.state.dimse
    return service


def _info(current: DimseStatus) -> DimseServiceInfo:
    settings = current.settings
    return DimseServiceInfo(
        ae_title=settings.ae_title,
        host=settings.host,
        port=settings.port,
        allowed_calling_ae_titles=list(settings.allowed_calling_ae_titles),
        unknown_callers=settings.unknown_callers,
        running=current.running,
        open_associations=current.open_associations,
        sources=current.sources,
    )


def _change(request: Request, changes: dict[str, Any], user_name: str) -> DimseServiceInfo:
    try:
        current = dimse_service(request).change(changes, user_name)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    except ListenError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except SQLAlchemyError:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "The index database failed, so the change was not saved; the service is unchanged",
        ) from None
    publish_audit(
        request,
        AuditEventType.SECURITY_ALERT,
        AuditAction.UPDATE,
        user_name,
        "Changed the DIMSE service settings",
        detail={"changes": changes},
    )
    return _info(current)


@router.get("", response_model=DimseServiceInfo)
def get_dimse_service(request: Request, admin: AdminUser) -> DimseServiceInfo:
    """Return the DIMSE service's AE title, address, calling AE title rules and state."""
    return _info(dimse_service(request).status())


@router.patch("", response_model=DimseServiceInfo)
def change_dimse_service(
    body: DimseSettingsChange, request: Request, admin: AdminUser
) -> DimseServiceInfo:
    """Change some settings of the DIMSE service; they apply to new associations at once.

    The AE title, the allowed calling AE titles and the unknown callers
    policy apply to the next association. A new host or port moves the listener: the service listens
    on the new address, stops accepting on the old one, and lets the
    associations in flight there finish. The values are saved in the index
    database and take precedence over the configuration at the next start.

    Notes
    -----
    - 200: applied and saved.
    - 409: the new address cannot be bound; nothing changed.
    - 422: a value is invalid, with a message naming it.
    - 503: the index database failed; nothing changed.
    """
    return _change(request, body.model_dump(exclude_none=True), admin.name)


@router.put("", response_model=DimseServiceInfo)
def replace_dimse_service(
    body: DimseSettingsChange, request: Request, admin: AdminUser
) -> DimseServiceInfo:
    """Set all changeable settings of the DIMSE service at once, as PATCH applies them.

    Notes
    -----
    - 422: a setting is missing or invalid; otherwise as for PATCH.
    """
    changes = body.model_dump()
    missing = [key for key, value in changes.items() if value is None]
    if missing:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"PUT needs every setting; missing: {', '.join(missing)}. "
            "Use PATCH to change only some",
        )
    return _change(request, changes, admin.name)


@router.delete("/saved", response_model=DimseServiceInfo)
def reset_dimse_service(request: Request, admin: AdminUser) -> DimseServiceInfo:
    """Forget the settings saved through this API and return to the configured ones.

    Notes
    -----
    - 200: the configured settings apply again, at once.
    - 409: the configured address cannot be bound; nothing changed.
    - 503: the index database failed; nothing changed.
    """
    try:
        current = dimse_service(request).reset(admin.name)
    except ListenError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except SQLAlchemyError:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "The index database failed; the saved settings are unchanged",
        ) from None
    publish_audit(
        request,
        AuditEventType.SECURITY_ALERT,
        AuditAction.UPDATE,
        admin.name,
        "Reset the DIMSE service to the configured settings",
    )
    return _info(current)
