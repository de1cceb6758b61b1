"""Node access control on the DIMSE service: decide at association, refuse per request.

When an A-ASSOCIATE-RQ arrives, the calling AE title's node is read from
the index database, so that changes made through the console, the HTTP API,
the command line or another server process apply to the next association.
The decision (:func:`dicomvault.access.decide`) either rejects the
association (A-ASSOCIATE-RJ, PS3.8 9.3.4) or admits it with permissions,
which are kept for the association's lifetime. Each C-STORE, C-FIND, C-MOVE
and C-GET request then checks them in memory, without a database query.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import weakref
from typing import Any

from pynetdicom import evt
from sqlalchemy.exc import SQLAlchemyError

from dicomvault.access import Grant, Rejection, decide
from dicomvault.archive import Archive
from dicomvault.audit import ActorKind, AuditAction, AuditEvent, AuditEventType, AuditOutcome
from dicomvault.dimse.tls import peer_certificate_subject
from dicomvault.index.nodes import NodeRegistry
from dicomvault.permissions import Permission

LOGGER = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, reason) of PS3.8 Table 9-21.
# Rejected-permanent, DICOM UL service-user, calling AE title not recognized.
REJECT_CALLING_AE_TITLE = (0x01, 0x01, 0x03)
# Rejected-transient, DICOM UL service-user, no reason given: the registry could not be read.
REJECT_TRANSIENT = (0x02, 0x01, 0x01)

# The reasons of A-ASSOCIATE-RJ by (source, reason/diag.) in the words of PS3.8 Table 9-21.
REJECT_REASON_NAMES = {
    (0x01, 0x01): "no-reason-given",
    (0x01, 0x02): "application-context-name-not-supported",
    (0x01, 0x03): "calling-AE-title-not-recognized",
    (0x01, 0x07): "called-AE-title-not-recognized",
    (0x02, 0x01): "no-reason-given",
    (0x02, 0x02): "protocol-version-not-supported",
    (0x03, 0x01): "temporary-congestion",
    (0x03, 0x02): "local-limit-exceeded",
}

# Reasons of rejections that pynetdicom makes itself, for the log and the audit trail.
_PYNETDICOM_REJECTIONS = {
    (0x01, 0x01, 0x03): "the calling AE title is not in dimse.allowed_calling_ae_titles",
    (0x01, 0x01, 0x07): "the called AE title is not the archive's",
    (0x02, 0x02, 0x01): "the user identity was not accepted",
    (0x02, 0x03, 0x02): "dimse.max_associations associations are open",
}


@dataclasses.dataclass
class _AssociationAccess:
    """The grant of one association, and how often it refused each operation."""

    grant: Grant
    refusals: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)


class AccessControl:
    """Decides what each calling AE title may do, per association, and enforces it.

    Parameters
    ----------
    archive : Archive
        Its index database contains the node registry, its settings give
        ``dimse.unknown_callers`` (read at each association request, so a
        change through the HTTP API applies to the next one), and its event
        bus receives the audit events of rejections and refusals.
    """

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.registry = NodeRegistry(archive.engine)
        self._grants: weakref.WeakKeyDictionary[Any, _AssociationAccess] = (
            weakref.WeakKeyDictionary()
        )
        # The reason for people, and the A-ASSOCIATE-RJ (result, source, reason/diag.).
        self._rejections: weakref.WeakKeyDictionary[Any, tuple[str, tuple[int, int, int]]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    # --- at association ---------------------------------------------------------------------

    def on_requested(self, event: Any) -> None:
        """Admit or reject an association request (bound to ``evt.EVT_REQUESTED``).

        pynetdicom calls this on the association's thread before it
        negotiates, so a rejection here sends A-ASSOCIATE-RJ in place of
        the negotiation. The rejection is announced with ``evt.EVT_REJECTED``
        as pynetdicom's own rejections are; :meth:`rejection_reason` gives
        its reason.
        """
        assoc = event.assoc
        ae_title = str(assoc.requestor.primitive.calling_ae_title).strip()
        # pynetdicom sets the requestor's AE title only when it negotiates;
        # the rejection handlers and logs need it before.
        assoc.requestor.ae_title = ae_title
        address = str(assoc.requestor.address)
        try:
            node = self.registry.get(ae_title)
        except SQLAlchemyError as exc:
            LOGGER.error(
                "Cannot read the node of calling AE title %s (%s) from the index database: %s",
                ae_title,
                address,
                exc,
            )
            reason = "the node registry could not be read from the index database"
            self.reject(assoc, reason, REJECT_TRANSIENT)
            return

        subject = None
        if node is not None and node.tls_client_subject:
            subject = peer_certificate_subject(assoc)
        decision = decide(
            ae_title, address, node, self.archive.settings.dimse.unknown_callers, subject
        )
        if isinstance(decision, Rejection):
            self.reject(assoc, decision.reason, REJECT_CALLING_AE_TITLE)
            return
        self.record_grant(assoc, decision)

    def record_grant(self, assoc: Any, grant: Grant) -> None:
        """Keep ``grant`` as what the caller of ``assoc`` may do until the association ends."""
        with self._lock:
            self._grants[assoc] = _AssociationAccess(grant)

    def describe(self, assoc: Any) -> str:
        """Return the grant of ``assoc`` for logs: "registered node, permissions: store"."""
        with self._lock:
            state = self._grants.get(assoc)
        return "no access decision" if state is None else state.grant.describe()

    def rejection_reason(self, assoc: Any) -> str:
        """Return why ``assoc`` was rejected, by this class or by pynetdicom."""
        with self._lock:
            rejection = self._rejections.get(assoc)
        if rejection is not None:
            return rejection[0]
        return _PYNETDICOM_REJECTIONS.get(_pynetdicom_rejection(assoc), "no reason recorded")

    def rejection_code(self, assoc: Any) -> str:
        """Return the A-ASSOCIATE-RJ reason of ``assoc`` in the words of PS3.8 Table 9-21.

        For example "calling-AE-title-not-recognized". "unknown" means that
        no rejection was recorded.
        """
        with self._lock:
            rejection = self._rejections.get(assoc)
        if rejection is not None:
            _, source, diagnostic = rejection[1]
        else:
            _, source, diagnostic = _pynetdicom_rejection(assoc)
        return REJECT_REASON_NAMES.get((source, diagnostic), "unknown")

    def reject(self, assoc: Any, reason: str, result_source_reason: tuple[int, int, int]) -> None:
        """Send A-ASSOCIATE-RJ with ``result_source_reason`` and end ``assoc``.

        Call it from an ``evt.EVT_REQUESTED`` handler. :meth:`rejection_reason`
        and :meth:`rejection_code` then return ``reason`` and the PS3.8 name.
        """
        with self._lock:
            self._rejections[assoc] = (reason, result_source_reason)
        # The same steps as pynetdicom's own rejection during negotiation.
        assoc.acse.send_reject(*result_source_reason)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    # --- per request ---------------------------------------------------------------------------

    def check_permission(self, assoc: Any, permission: Permission, operation: str) -> str | None:
        """Check that the caller of ``assoc`` has ``permission`` for ``operation``.

        Returns None when it has. Otherwise logs and audits the refusal and
        returns the Error Comment for the "Refused: Not authorized" (0x0124)
        response, naming the AE title and the missing permission. The first
        refusal of each operation on an association is logged as a warning,
        repeats at debug level; each one is an audit event.
        """
        with self._lock:
            state = self._grants.get(assoc)
        if state is not None and state.grant.allows(permission):
            return None

        requestor = assoc.requestor
        ae_title = str(requestor.ae_title)
        address = str(requestor.address)
        if state is None:
            # Cannot happen while on_requested is bound to EVT_REQUESTED; refuse to be safe.
            LOGGER.error(
                "%s from %s @ %s: no access decision was made", operation, ae_title, address
            )
            comment = "Not authorized: no access decision for this association"
            description = f"{operation} refused: no access decision for the association"
            kind = "caller"
        else:
            comment = f"{ae_title} lacks the {permission.value} permission for {operation}"
            kind = "registered node" if state.grant.registered else "unknown caller"
            description = (
                f"{operation} refused: {kind} {ae_title} lacks the {permission.value} permission"
            )
            state.refusals[operation] += 1
            level = logging.WARNING if state.refusals[operation] == 1 else logging.DEBUG
            LOGGER.log(
                level,
                "%s from %s @ %s refused with 0x0124: the %s lacks the %s permission "
                "(refusal %d of this operation on the association)",
                operation,
                ae_title,
                address,
                kind,
                permission.value,
                state.refusals[operation],
            )
        self.archive.events.publish(
            AuditEvent(
                AuditEventType.SECURITY_ALERT,
                AuditAction.EXECUTE,
                AuditOutcome.MINOR_FAILURE,
                actor=ae_title or "unknown",
                actor_kind=ActorKind.NODE,
                description=description,
                source=address,
                detail={
                    "operation": operation,
                    "permission": permission.value,
                    "caller": kind,
                },
            )
        )
        return comment


def _pynetdicom_rejection(assoc: Any) -> tuple[Any, Any, Any]:
    """Return the (result, source, reason/diag.) of a rejection pynetdicom sent itself."""
    primitive = getattr(assoc.acceptor, "primitive", None)
    return (
        getattr(primitive, "result", None),
        getattr(primitive, "result_source", None),
        getattr(primitive, "diagnostic", None),
    )
