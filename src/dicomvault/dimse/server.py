"""The DIMSE association server: presentation contexts, handlers, start and graceful stop."""

from __future__ import annotations

import logging
import ssl
import threading
import time
import weakref
from typing import Any

from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomvault.archive import Archive
from dicomvault.audit import ActorKind, AuditAction, AuditEvent, AuditEventType, AuditOutcome
from dicomvault.config import DimseSettings
from dicomvault.dimse.access_control import AccessControl
from dicomvault.dimse.direct_send import send_directly
from dicomvault.dimse.idle_wait import wait_when_idle
from dicomvault.dimse.limits import (
    AssociationsPerAE,
    end_unrequested_association,
    limit_dataset_size,
    limit_pdu_length,
    shorten_text_decode_errors,
)
from dicomvault.dimse.qr_scp import (
    FIND_SOP_CLASSES,
    ExtendedNegotiation,
    handle_find,
    install_find_service,
)
from dicomvault.dimse.retrieve_scp import (
    RETRIEVE_SOP_CLASSES,
    RetrieveAE,
    install_retrieve_service,
)
from dicomvault.dimse.storage_scp import handle_store
from dicomvault.dimse.tcp import disable_nagle, read_promptly
from dicomvault.dimse.tls import complete_handshake
from dicomvault.events import AssociationAccepted, AssociationEnded, AssociationRejected
from dicomvault.permissions import format_permissions, unknown_caller_permissions

LOGGER = logging.getLogger(__name__)

SHUTDOWN_POLL_SECONDS = 0.1


def readable_transfer_syntaxes() -> list[str]:
    """Return the transfer syntaxes pydicom can read a header in, in order of preference.

    pynetdicom accepts, for each proposed presentation context, the first
    syntax of this list that the requestor proposed. Encapsulated
    (compressed) syntaxes come first, so a sender that proposes its file's
    compressed syntax beside uncompressed ones sends the file as it is rather
    than decompressing it. Then come Explicit VR Little Endian, Deflated, Implicit
    VR Little Endian and Explicit VR Big Endian.
    """
    readable = []
    for uid in ALL_TRANSFER_SYNTAXES:
        try:
            UID(uid).is_implicit_VR  # noqa: B018 - raises for syntaxes pydicom does not know
        except ValueError:
            continue
        readable.append(UID(uid))
    uncompressed_order = [
        ExplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
    ]
    compressed = [uid for uid in readable if uid not in uncompressed_order]
    return [str(uid) for uid in compressed + [u for u in uncompressed_order if u in readable]]


def storage_sop_classes() -> list[str]:
    """Return every storage SOP Class UID that pynetdicom defines."""
    return [str(context.abstract_syntax) for context in AllStoragePresentationContexts]


class ListenError(OSError):
    """A DIMSE port could not be opened."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"Cannot listen on {host}:{port}: {reason}")
        self.port = port


class DimseServer:
    """Runs the archive's SCPs on a plain TCP port, a TLS port or both, until :meth:`stop`.

    :meth:`apply` changes the AE title, the allowed calling AE titles and
    the listening address while the server runs.

    Parameters
    ----------
    archive : Archive
        The archive the SCPs serve; its ``dimse`` settings give the ports.
    tls_context : ssl.SSLContext, optional
        The context of ``dimse.tls_port``, from
        :func:`dicomvault.dimse.tls.dimse_server_context`. Required when that
        port is set.
    """

    def __init__(self, archive: Archive, tls_context: ssl.SSLContext | None = None) -> None:
        if archive.settings.dimse.tls_port and tls_context is None:
            raise ValueError("dimse.tls_port is set, so the server needs a TLS context")
        self.archive = archive
        self.settings = archive.settings.dimse
        self.tls_context = tls_context
        self.negotiation = ExtendedNegotiation()
        self.access = AccessControl(archive)
        self.associations_per_ae = AssociationsPerAE(
            self.settings.max_associations_per_ae, self.access
        )
        self.ae = self._build_ae()
        self._server: Any = None  # the plain port's listener
        self._tls_server: Any = None
        # Listeners replaced by apply() or closed by stop_accepting() whose
        # associations are still finishing.
        self._draining: list[Any] = []
        self._lock = threading.Lock()
        # When each open association was accepted (time.monotonic()).
        self._accepted_at: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def _build_ae(self) -> AE:
        install_retrieve_service()
        install_find_service()
        share_uids_when_copied()
        shorten_text_decode_errors()
        ae = RetrieveAE(ae_title=self.settings.ae_title)
        ae.archive = self.archive
        ae.access = self.access
        ae.maximum_associations = self.settings.max_associations
        ae.maximum_pdu_size = self.settings.max_pdu_size
        ae.acse_timeout = self.settings.acse_timeout
        ae.dimse_timeout = self.settings.dimse_timeout
        ae.network_timeout = self.settings.network_timeout
        if self.settings.allowed_calling_ae_titles:
            ae.require_calling_aet = list(self.settings.allowed_calling_ae_titles)

        syntaxes = readable_transfer_syntaxes()
        ae.add_supported_context(Verification, syntaxes)
        # SCP/SCU role selection is accepted so that a C-GET SCU can take the
        # Storage SCP role on the same association (PS3.7 D.3.3.4).
        for sop_class in storage_sop_classes():
            ae.add_supported_context(sop_class, syntaxes, scu_role=True, scp_role=True)
        for sop_class in FIND_SOP_CLASSES + RETRIEVE_SOP_CLASSES:
            ae.add_supported_context(sop_class, syntaxes)
        return ae

    def handlers(self) -> list[tuple[Any, ...]]:
        """Return the pynetdicom event handlers of the SCPs and the association log."""
        return [
            (evt.EVT_C_ECHO, _handle_echo),
            (evt.EVT_C_STORE, handle_store, [self.archive, self.access]),
            (evt.EVT_C_FIND, handle_find, [self.archive, self.negotiation, self.access]),
            (evt.EVT_SOP_EXTENDED, self.negotiation.handle),
            (evt.EVT_CONN_OPEN, self._prepare_connection),
            (evt.EVT_FSM_TRANSITION, end_unrequested_association),
            # The access control first: it sets the calling AE title the limit counts by.
            (evt.EVT_REQUESTED, self.access.on_requested),
            (evt.EVT_REQUESTED, self.associations_per_ae.on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
        ]

    def _prepare_connection(self, event: Any) -> None:
        # Runs on the connection's own thread, before the association starts.
        # NOTE: pynetdicom 3.0 starts a thread for each TCP connection before any
        # limit applies, and one that sends nothing keeps it for dimse.acse_timeout.
        # A flood of silent connections is bounded only by that timeout.
        settings = self.settings
        if not complete_handshake(event.assoc, settings.acse_timeout):
            return
        disable_nagle(event.assoc)
        read_promptly(event.assoc, settings.network_timeout)
        limit_pdu_length(event.assoc, settings.max_pdu_size)
        limit_dataset_size(event.assoc, settings.max_dataset_size)
        wait_when_idle(event.assoc)

    def _on_accepted(self, event: Any) -> None:
        transport = getattr(event.assoc.dul.socket, "socket", None)
        over_tls = " over TLS" if isinstance(transport, ssl.SSLSocket) else ""
        LOGGER.info(
            "Association accepted from %s%s (%s)",
            _peer(event.assoc),
            over_tls,
            self.access.describe(event.assoc),
        )
        # Responses go straight to the socket, not through the DUL thread's queue,
        # which it checks once a millisecond.
        send_directly(event.assoc)
        with self._lock:
            self._accepted_at[event.assoc] = time.monotonic()
        requestor = event.assoc.requestor
        self.archive.events.publish(
            AssociationAccepted(requestor.ae_title, str(requestor.address), bool(over_tls))
        )

    def _on_released(self, event: Any) -> None:
        LOGGER.info("Association released by %s", _peer(event.assoc))
        self._publish_end(event.assoc, aborted=False)

    def _on_aborted(self, event: Any) -> None:
        if not event.assoc.requestor.ae_title:
            # A connection that closed before any A-ASSOCIATE-RQ, such as a port check.
            LOGGER.debug(
                "Connection from %s:%s closed before association",
                event.assoc.requestor.address,
                event.assoc.requestor.port,
            )
            return
        LOGGER.warning("Association aborted with %s", _peer(event.assoc))
        self._publish_end(event.assoc, aborted=True)

    def _publish_end(self, assoc: Any, aborted: bool) -> None:
        with self._lock:
            accepted_at = self._accepted_at.pop(assoc, None)
        if accepted_at is None:
            return  # rejected, or already ended
        self.archive.events.publish(
            AssociationEnded(
                assoc.requestor.ae_title, aborted, duration=time.monotonic() - accepted_at
            )
        )

    def _on_rejected(self, event: Any) -> None:
        reason = self.access.rejection_reason(event.assoc)
        LOGGER.warning("Association rejected from %s: %s", _peer(event.assoc), reason)
        requestor = event.assoc.requestor
        self.archive.events.publish(
            AssociationRejected(
                requestor.ae_title or "",
                str(requestor.address),
                self.access.rejection_code(event.assoc),
            )
        )
        self.archive.events.publish(
            AuditEvent(
                AuditEventType.SECURITY_ALERT,
                AuditAction.EXECUTE,
                AuditOutcome.MINOR_FAILURE,
                actor=requestor.ae_title or "unknown",
                actor_kind=ActorKind.NODE,
                description=f"Association rejected: {reason}",
                source=str(requestor.address),
                detail={"called_ae_title": event.assoc.acceptor.ae_title, "reason": reason},
            )
        )

    def start(self) -> None:
        """Listen on the configured ports; returns once they are open.

        Raises
        ------
        ListenError
            If a port cannot be bound (in use, or the address is not local).
            No port is left open then.
        """
        with self._lock:
            try:
                if self.settings.port:
                    self._server = self._listen(self.settings, self.settings.port, None)
                if self.settings.tls_port:
                    self._tls_server = self._listen(
                        self.settings, self.settings.tls_port, self.tls_context
                    )
            except ListenError:
                for server in self._live():
                    server.shutdown()
                self._server = self._tls_server = None
                raise
        LOGGER.info(
            "Calling AE titles that are not registered nodes: %s (dimse.unknown_callers = %s)",
            describe_unknown_callers(self.settings.unknown_callers),
            self.settings.unknown_callers,
        )

    @property
    def is_running(self) -> bool:
        """True while the server accepts associations."""
        return bool(self._live())

    def open_associations(self) -> int:
        """Count the established associations, also those of a listener being replaced."""
        with self._lock:
            servers = [*self._draining, *self._live()]
        return len(_established(servers))

    def apply(self, settings: DimseSettings) -> None:
        """Use ``settings`` for new associations; open associations are not changed.

        The AE title and the allowed calling AE titles take effect at once.
        ``unknown_callers`` is read from ``archive.settings`` at each
        association request, so it applies once the caller stores the new
        settings there.
        When the host or port differs, the server listens on the new address
        first, then stops accepting on the old one. The associations in
        flight there may finish, for up to ``settings.shutdown_timeout``
        seconds, watched by a background thread that aborts the rest.

        A new host moves the TLS listener too, on the same TLS port.

        Raises
        ------
        ListenError
            If a new address cannot be bound; then nothing has changed.
        """
        with self._lock:
            old = self.settings
            replaced = []
            plain = self._server
            if (settings.host, settings.port) != (old.host, old.port):
                plain = self._listen(settings, settings.port, None) if settings.port else None
                if self._server is not None:
                    replaced.append(self._server)
            tls = self._tls_server
            if settings.host != old.host and self._tls_server is not None:
                try:
                    tls = self._listen(settings, settings.tls_port, self.tls_context)
                except ListenError:
                    if plain is not None and plain is not self._server:
                        plain.shutdown()
                    raise
                replaced.append(self._tls_server)
            self._server, self._tls_server = plain, tls
            for server in replaced:
                server.shutdown()
                host, port = server.server_address[:2]
                LOGGER.info("DIMSE service stopped listening on %s:%d", host, port)
                self._draining.append(server)
                threading.Thread(
                    target=self._drain,
                    args=(server, settings.shutdown_timeout),
                    name="dimse-drain",
                    daemon=True,
                ).start()
            self.ae.ae_title = settings.ae_title
            self.ae.require_calling_aet = list(settings.allowed_calling_ae_titles)
            self.associations_per_ae.set_limit(settings.max_associations_per_ae)
            for server in self._live():
                server.ae_title = settings.ae_title
            self.settings = settings
        LOGGER.info(
            "DIMSE service settings changed: AE title %s on %s:%d, allowed calling AE titles: "
            "%s, unknown callers: %s",
            settings.ae_title,
            settings.host,
            settings.port,
            ", ".join(settings.allowed_calling_ae_titles) or "any",
            describe_unknown_callers(settings.unknown_callers),
        )

    def stop_accepting(self) -> None:
        """Close the listeners, so that new connections are refused.

        Open associations go on, and :meth:`stop` then waits for them.
        """
        with self._lock:
            live = self._live()
            self._server = self._tls_server = None
            self._draining.extend(live)
        for server in live:
            server.shutdown()
            host, port = server.server_address[:2]
            LOGGER.info("DIMSE service stopped listening on %s:%d", host, port)

    def stop(self, timeout: float | None = None, abort: threading.Event | None = None) -> None:
        """Stop accepting associations, wait for those in flight, then abort the rest.

        Parameters
        ----------
        timeout : float, optional
            Seconds the associations in flight get to finish;
            ``dimse.shutdown_timeout`` when None.
        abort : threading.Event, optional
            When set during the wait, the remaining associations are aborted at once.
        """
        self.stop_accepting()
        with self._lock:
            servers = list(self._draining)
        if not servers:
            return
        deadline = time.monotonic() + (
            self.settings.shutdown_timeout if timeout is None else timeout
        )
        _finish_associations(servers, deadline, "at shutdown", abort)
        with self._lock:
            self._draining.clear()
        LOGGER.info("DIMSE service stopped")

    def _live(self) -> list[Any]:
        return [server for server in (self._server, self._tls_server) if server is not None]

    def _listen(self, settings: DimseSettings, port: int, context: ssl.SSLContext | None) -> Any:
        try:
            server = self.ae.start_server(
                (settings.host, port),
                block=False,
                ssl_context=context,
                evt_handlers=self.handlers(),
                ae_title=settings.ae_title,
            )
        except OSError as exc:
            raise ListenError(settings.host, port, exc.strerror or str(exc)) from exc
        if context is None:
            LOGGER.info(
                "DIMSE service %s listening on %s:%d", settings.ae_title, settings.host, port
            )
        else:
            LOGGER.info(
                "DIMSE service %s listening for TLS on %s:%d (%s)",
                settings.ae_title,
                settings.host,
                port,
                _client_certificates(settings),
            )
        return server

    def _drain(self, server: Any, timeout: float) -> None:
        _finish_associations([server], time.monotonic() + timeout, "after the port change")
        with self._lock:
            if server in self._draining:
                self._draining.remove(server)


def describe_unknown_callers(policy: str) -> str:
    """Return what ``dimse.unknown_callers`` lets unknown callers do, for logs."""
    permissions = unknown_caller_permissions(policy)
    if permissions is None:
        return "rejected at association"
    if not permissions:
        return "accepted for C-ECHO only"
    return f"accepted with permissions {format_permissions(permissions)}"


def share_uids_when_copied() -> None:
    """Make ``copy.deepcopy`` return a pydicom UID itself instead of a copy.

    pynetdicom deep-copies the supported presentation contexts for every
    association. The archive supports about 180 SOP classes with about 45
    transfer syntaxes each, and copying those UIDs one by one took 70 ms per
    association. A UID is an immutable string, so sharing it is safe.
    """
    UID.__deepcopy__ = _same_uid  # type: ignore[attr-defined]


def _same_uid(uid: UID, memo: dict[int, Any]) -> UID:
    return uid


def _established(servers: list[Any]) -> list[Any]:
    return [
        assoc for server in servers for assoc in server.active_associations if assoc.is_established
    ]


def _client_certificates(settings: DimseSettings) -> str:
    if settings.tls_require_client_cert:
        return "client certificates required"
    if settings.tls_ca_file:
        return "client certificates verified when sent"
    return "no client certificates requested"


def _finish_associations(
    servers: list[Any], deadline: float, when: str, abort: threading.Event | None = None
) -> None:
    """Wait until the servers' associations end, ``deadline`` passes or ``abort`` is set.

    Then abort the associations that remain.
    """
    abort = abort or threading.Event()

    def established() -> list[Any]:
        return _established(servers)

    active = established()
    if active:
        LOGGER.info(
            "Waiting up to %.0f s for %d associations to finish",
            max(0.0, deadline - time.monotonic()),
            len(active),
        )
    while active and time.monotonic() < deadline and not abort.is_set():
        abort.wait(SHUTDOWN_POLL_SECONDS)
        active = established()
    for assoc in active:
        LOGGER.warning("Aborting association with %s %s", _peer(assoc), when)
        assoc.abort()
    # Connections still negotiating (or that never sent an A-ASSOCIATE-RQ,
    # such as port probes) have no work in flight. A probe's thread lingers
    # for up to dimse.acse_timeout after the peer closed, and a blocking
    # abort takes at least 0.1 s each (pynetdicom 3.0), so these are not
    # waited for.
    for server in servers:
        for assoc in server.active_associations:
            assoc.abort(block=False)


def _peer(assoc: Any) -> str:
    requestor = assoc.requestor
    return f"{requestor.ae_title} @ {requestor.address}:{requestor.port}"


def _handle_echo(event: Any) -> int:
    LOGGER.debug("C-ECHO from %s", _peer(event.assoc))
    return 0x0000
