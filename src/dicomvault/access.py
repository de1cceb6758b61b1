"""Access decisions for calling AE titles: admit a caller with permissions, or reject it.

A decision is made once per association, from the registered node of the
calling AE title (or its absence) and ``dimse.unknown_callers``. It has no
I/O: :mod:`dicomvault.dimse.access_control` looks the node up and applies
the decision to the association.
"""

from __future__ import annotations

import dataclasses

from cryptography import x509

from dicomvault.nodes import RemoteNode
from dicomvault.permissions import (
    Permission,
    address_allowed,
    format_permissions,
    subject_matches,
    unknown_caller_permissions,
)


@dataclasses.dataclass(frozen=True)
class Grant:
    """The permissions of an admitted caller on its association.

    ``registered`` is False for a calling AE title that is not a registered
    node, admitted under ``dimse.unknown_callers``.
    """

    ae_title: str
    permissions: frozenset[Permission]
    registered: bool

    def allows(self, permission: Permission) -> bool:
        """Return whether the caller may use the services of ``permission``."""
        return permission in self.permissions

    def describe(self) -> str:
        """Return "registered node, permissions: store" or "unknown caller, ..." for logs."""
        kind = "registered node" if self.registered else "unknown caller"
        return f"{kind}, permissions: {format_permissions(self.permissions)}"


@dataclasses.dataclass(frozen=True)
class Rejection:
    """A rejected association request, with its reason as a sentence for logs and audit."""

    ae_title: str
    reason: str


def decide(
    ae_title: str,
    address: str,
    node: RemoteNode | None,
    unknown_callers: str,
    certificate_subject: x509.Name | None = None,
) -> Grant | Rejection:
    """Decide whether a caller may associate, and with which permissions.

    Parameters
    ----------
    ae_title : str
        The calling AE title, without padding.
    address : str
        The IP address the association comes from.
    node : RemoteNode or None
        The registered node of ``ae_title``, or None if there is none.
    unknown_callers : str
        The parsed value of ``dimse.unknown_callers``.
    certificate_subject : x509.Name, optional
        The subject of the caller's verified TLS client certificate; None
        without TLS or without a client certificate. Only read when the
        node has a ``tls_client_subject``.

    Returns
    -------
    Grant or Rejection
        A registered node gets its own permissions when the address and the
        certificate subject meet its pins. An unknown caller gets the
        permissions of ``unknown_callers``, or a rejection when it is "reject".
    """
    if node is None:
        permissions = unknown_caller_permissions(unknown_callers)
        if permissions is None:
            return Rejection(
                ae_title,
                f"calling AE title {ae_title} is not a registered node, "
                "and dimse.unknown_callers is reject",
            )
        return Grant(ae_title, permissions, registered=False)

    if node.source_addresses and not address_allowed(address, node.source_addresses):
        return Rejection(
            ae_title,
            f"{ae_title} called from {address}, which is not among the node's source "
            f"addresses ({', '.join(node.source_addresses)})",
        )
    if node.tls_client_subject:
        if certificate_subject is None:
            return Rejection(
                ae_title,
                f"{ae_title} must present a TLS client certificate with subject "
                f"{node.tls_client_subject}, but the association has no client certificate",
            )
        if not subject_matches(node.tls_client_subject, certificate_subject):
            return Rejection(
                ae_title,
                f"{ae_title} presented a TLS client certificate with subject "
                f"{certificate_subject.rfc4514_string()}, which does not contain the "
                f"node's subject {node.tls_client_subject}",
            )
    return Grant(ae_title, node.permissions, registered=True)
