"""REST API of remote DICOM nodes: list, add, change, remove and C-ECHO (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from dicomvault.archive import Archive
from dicomvault.audit import AuditAction, AuditEventType
from dicomvault.dimse.echo_scu import echo
from dicomvault.index.nodes import NodeExistsError, NodeNotFoundError, NodeRegistry
from dicomvault.nodes import RemoteNode, make_node
from dicomvault.permissions import Permission
from dicomvault.web.audit_events import publish_audit
from dicomvault.web.identity import AdminUser

router = APIRouter(prefix="/api/nodes", tags=["remote nodes"])

DEFAULT_ECHO_TIMEOUT = 10.0
MAX_ECHO_TIMEOUT = 60.0


class NodeFields(BaseModel):
    """Address, options and access of a remote node."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(description="Host name or IP address.")
    port: int = Field(description="TCP port of the node's DIMSE service, 1 to 65535.")
    description: str = Field("", max_length=1000)
    tls: bool = Field(
        False,
        description="Associations with the node use DICOM over TLS. This API sets no TLS "
        "files, and a PUT clears those set with 'dicomvault node add' or the configuration file.",
    )
    permissions: list[Permission] = Field(
        default_factory=lambda: list(Permission),
        description="Services the node may use when it calls: store (C-STORE), query "
        "(C-FIND), retrieve (C-MOVE, C-GET). C-ECHO is always allowed. Default: all.",
    )
    source_addresses: list[str] = Field(
        default_factory=list,
        description="IP addresses or networks (CIDR) the node must call from; empty: any.",
    )
    tls_client_subject: str = Field(
        "",
        description="RFC 4514 name, such as CN=ct01.example.org, that the subject of the "
        "node's TLS client certificate must contain; empty: not checked.",
    )


class NodeEntry(NodeFields):
    """A remote node: a C-MOVE destination and a C-ECHO peer."""

    ae_title: str = Field(description="1 to 16 printable ASCII characters, no backslash.")


class EchoOutcome(BaseModel):
    """The result of one C-ECHO."""

    ae_title: str
    success: bool
    milliseconds: float = Field(description="Time from the association request to the release.")
    message: str = Field(description="'success', or what failed.")


def _registry(request: Request) -> NodeRegistry:
    archive: Archive = request.app.state.archive
    return NodeRegistry(archive.engine)


def _entry(node: RemoteNode) -> NodeEntry:
    return NodeEntry(
        ae_title=node.ae_title,
        host=node.host,
        port=node.port,
        description=node.description,
        tls=node.tls,
        permissions=[permission for permission in Permission if permission in node.permissions],
        source_addresses=list(node.source_addresses),
        tls_client_subject=node.tls_client_subject,
    )


def _validated(ae_title: str, fields: NodeFields) -> RemoteNode:
    try:
        return make_node(
            ae_title,
            fields.host,
            fields.port,
            fields.description,
            fields.tls,
            permissions=[permission.value for permission in fields.permissions],
            source_addresses=fields.source_addresses,
            tls_client_subject=fields.tls_client_subject,
        )
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"Invalid node: {exc}") from None


def _audit_node(request: Request, actor: str, action: AuditAction, description: str) -> None:
    """Record a change of the registered nodes, a configuration change (Security Alert)."""
    publish_audit(request, AuditEventType.SECURITY_ALERT, action, actor, description)


def _not_found(ae_title: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"No node with AE title {ae_title!r}")


@router.get("", response_model=list[NodeEntry])
def list_nodes(request: Request, admin: AdminUser) -> list[NodeEntry]:
    """List the registered nodes, sorted by AE title."""
    return [_entry(node) for node in _registry(request).list()]


@router.post("", response_model=NodeEntry, status_code=status.HTTP_201_CREATED)
def add_node(body: NodeEntry, request: Request, admin: AdminUser) -> NodeEntry:
    """Register a node.

    Notes
    -----
    - 201: registered.
    - 409: a node with this AE title is registered.
    - 422: a field is invalid, with a message naming it.
    """
    node = _validated(body.ae_title, body)
    try:
        _registry(request).add(node)
    except NodeExistsError:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"A node with AE title {node.ae_title!r} is registered; change it with PUT",
        ) from None
    _audit_node(
        request,
        admin.name,
        AuditAction.CREATE,
        f"Added node {node.describe()}; {node.describe_access()}",
    )
    return _entry(node)


@router.get("/{ae_title}", response_model=NodeEntry)
def get_node(ae_title: str, request: Request, admin: AdminUser) -> NodeEntry:
    """Return one node; 404 if no node has this AE title."""
    node = _registry(request).get(ae_title)
    if node is None:
        raise _not_found(ae_title)
    return _entry(node)


@router.put("/{ae_title}", response_model=NodeEntry)
def change_node(ae_title: str, body: NodeFields, request: Request, admin: AdminUser) -> NodeEntry:
    """Change the address, options and access of a registered node.

    The body replaces the whole entry: a field left out gets its default,
    so leaving out ``permissions`` grants every permission. The change
    applies to the node's next association.

    Notes
    -----
    - 404: no node has this AE title.
    - 422: a field is invalid.
    """
    registry = _registry(request)
    if registry.get(ae_title) is None:
        raise _not_found(ae_title)
    node = _validated(ae_title, body)
    registry.add(node, replace=True)
    _audit_node(
        request,
        admin.name,
        AuditAction.UPDATE,
        f"Changed node {node.describe()}; {node.describe_access()}",
    )
    return _entry(node)


@router.delete("/{ae_title}", status_code=status.HTTP_204_NO_CONTENT)
def remove_node(ae_title: str, request: Request, admin: AdminUser) -> Response:
    """Remove a registered node; 404 if no node has this AE title."""
    try:
        _registry(request).remove(ae_title)
    except NodeNotFoundError:
        raise _not_found(ae_title) from None
    _audit_node(request, admin.name, AuditAction.DELETE, f"Removed node {ae_title}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{ae_title}/echo", response_model=EchoOutcome)
def echo_node(
    ae_title: str,
    request: Request,
    admin: AdminUser,
    timeout: Annotated[float, Query(gt=0, le=MAX_ECHO_TIMEOUT)] = DEFAULT_ECHO_TIMEOUT,
) -> EchoOutcome:
    """Send a C-ECHO to a registered node, calling with the archive's AE title.

    The request waits for the outcome, at most ``timeout`` seconds for each
    step of the association.

    Notes
    -----
    - 200: the C-ECHO was tried; ``success`` and ``message`` give the outcome.
    - 404: no node has this AE title.
    """
    node = _registry(request).get(ae_title)
    if node is None:
        raise _not_found(ae_title)
    archive: Archive = request.app.state.archive
    result = echo(node, archive.settings.dimse.ae_title, timeout)
    return EchoOutcome(
        ae_title=node.ae_title,
        success=result.success,
        milliseconds=round(result.seconds * 1000, 1),
        message=result.message,
    )
