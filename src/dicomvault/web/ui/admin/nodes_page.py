"""Console page of remote nodes: list, add, remove, change permissions, and C-ECHO per node."""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request, status
from fastapi.responses import HTMLResponse

from dicomvault.archive import Archive
from dicomvault.audit import AuditAction, AuditEventType
from dicomvault.dimse.echo_scu import echo
from dicomvault.index.nodes import NodeExistsError, NodeNotFoundError, NodeRegistry
from dicomvault.index.users import Session
from dicomvault.nodes import make_node
from dicomvault.permissions import Permission, format_permissions, parse_permissions
from dicomvault.web.audit_events import publish_audit
from dicomvault.web.ui.admin.common import ADMIN_PREFIX, render_panel
from dicomvault.web.ui.rendering import AdminSession, render_page

LOGGER = logging.getLogger(__name__)
SECURITY_ALERT = AuditEventType.SECURITY_ALERT

router = APIRouter(prefix=ADMIN_PREFIX, include_in_schema=False)

PAGE = "admin/nodes.html"
PANEL = "admin/nodes_panel.html"
ECHO_TIMEOUT_SECONDS = 10.0
EMPTY_FORM: dict[str, Any] = {
    "ae_title": "",
    "host": "",
    "port": "",
    "description": "",
    "permissions": [permission.value for permission in Permission],
    "source_addresses": "",
    "tls_client_subject": "",
}


def _registry(request: Request) -> NodeRegistry:
    archive: Archive = request.app.state.archive
    return NodeRegistry(archive.engine)


def _render(
    request: Request, session: Session, error_status: int | None = None, **extra: Any
) -> HTMLResponse:
    context = {
        "nodes": _registry(request).list(),
        "permission_names": [permission.value for permission in Permission],
        "form": EMPTY_FORM,
        "message": "",
        "error": "",
        **extra,
    }
    return render_panel(request, PAGE, PANEL, session, context, error_status)


@router.get("/nodes")
def nodes_page(request: Request, session: AdminSession) -> HTMLResponse:
    """Show the registered nodes and the form that adds one."""
    return _render(request, session)


@router.post("/nodes")
def add_node(
    request: Request,
    session: AdminSession,
    ae_title: Annotated[str, Form()],
    host: Annotated[str, Form()],
    port: Annotated[str, Form()],
    description: Annotated[str, Form()] = "",
    permissions: Annotated[list[str] | None, Form()] = None,
    source_addresses: Annotated[str, Form()] = "",
    tls_client_subject: Annotated[str, Form()] = "",
) -> HTMLResponse:
    """Register the node of the form; show the list again with the outcome.

    ``permissions`` are the checked boxes; with none checked, the node may
    only use C-ECHO. ``source_addresses`` is one text field, separated by commas.
    """
    form = {
        "ae_title": ae_title,
        "host": host,
        "port": port,
        "description": description,
        "permissions": permissions or [],
        "source_addresses": source_addresses,
        "tls_client_subject": tls_client_subject,
    }
    try:
        node = make_node(
            ae_title,
            host,
            port,
            description,
            permissions=permissions or [],
            source_addresses=source_addresses,
            tls_client_subject=tls_client_subject,
        )
    except ValueError as exc:
        return _render(
            request,
            session,
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            form=form,
            error=f"Invalid node: {exc}",
        )
    try:
        _registry(request).add(node)
    except NodeExistsError:
        return _render(
            request,
            session,
            status.HTTP_409_CONFLICT,
            form=form,
            error=f"A node with AE title {node.ae_title!r} is registered; remove it first",
        )
    LOGGER.info(
        "User %s registered node %s; %s",
        session.user.name,
        node.describe(),
        node.describe_access(),
    )
    description = f"Added node {node.describe()}; {node.describe_access()}"
    publish_audit(request, SECURITY_ALERT, AuditAction.CREATE, session.user.name, description)
    return _render(request, session, message=f"Registered {node.describe()}.")


@router.post("/nodes/{ae_title}/permissions")
def change_permissions(
    ae_title: str,
    request: Request,
    session: AdminSession,
    permissions: Annotated[list[str] | None, Form()] = None,
) -> HTMLResponse:
    """Set the permissions of a registered node to the checked boxes; keep its other fields.

    The node's next association uses them; open associations keep theirs.
    """
    registry = _registry(request)
    node = registry.get(ae_title)
    if node is None:
        return _render(
            request,
            session,
            status.HTTP_404_NOT_FOUND,
            error=f"No node with AE title {ae_title!r}",
        )
    try:
        granted = parse_permissions(permissions or [])
    except ValueError as exc:
        return _render(
            request,
            session,
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            error=f"Invalid permissions of {node.ae_title}: 'permissions' {exc}",
        )
    changed = dataclasses.replace(node, permissions=granted)
    registry.add(changed, replace=True)
    LOGGER.info(
        "User %s changed the permissions of node %s to %s",
        session.user.name,
        node.ae_title,
        format_permissions(granted),
    )
    description = f"Changed node {changed.describe()}; {changed.describe_access()}"
    publish_audit(request, SECURITY_ALERT, AuditAction.UPDATE, session.user.name, description)
    return _render(
        request,
        session,
        message=f"Permissions of {node.ae_title}: {format_permissions(granted)}.",
    )


@router.post("/nodes/{ae_title}/remove")
def remove_node(ae_title: str, request: Request, session: AdminSession) -> HTMLResponse:
    """Remove a registered node; show the list again with the outcome."""
    try:
        _registry(request).remove(ae_title)
    except NodeNotFoundError:
        return _render(
            request,
            session,
            status.HTTP_404_NOT_FOUND,
            error=f"No node with AE title {ae_title!r}",
        )
    LOGGER.info("User %s removed node %s", session.user.name, ae_title)
    description = f"Removed node {ae_title}"
    publish_audit(request, SECURITY_ALERT, AuditAction.DELETE, session.user.name, description)
    return _render(request, session, message=f"Removed {ae_title}.")


@router.post("/nodes/{ae_title}/echo")
def echo_node(ae_title: str, request: Request, session: AdminSession) -> HTMLResponse:
    """Send a C-ECHO to a node; return the outcome as a fragment for the node's row."""
    node = _registry(request).get(ae_title)
    if node is None:
        result = {"success": False, "text": f"No node with AE title {ae_title!r}"}
    else:
        archive: Archive = request.app.state.archive
        outcome = echo(node, archive.settings.dimse.ae_title, ECHO_TIMEOUT_SECONDS)
        milliseconds = outcome.seconds * 1000
        if outcome.success:
            text = f"Success in {milliseconds:.1f} ms"
        else:
            text = f"Failed after {milliseconds:.0f} ms: {outcome.message}"
        result = {"success": outcome.success, "text": text}
    return render_page(request, "admin/echo_result.html", session, {"result": result})
