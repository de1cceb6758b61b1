"""Retrieve SCP: C-MOVE to registered nodes and C-GET, with C-STORE sub-operations.

pynetdicom's own C-MOVE and C-GET service takes only decoded datasets, and
it sets the archive's AE title as Move Originator. So the archive runs the
sub-operations itself (PS3.4 C.4.2.3 and C.4.3.3). Stored files are sent as
they are when the peer accepts their transfer syntax, and are decoded and
converted only when it does not. The class below replaces pynetdicom's
Query/Retrieve service class for the retrieve SOP classes. C-FIND has its
own in ``qr_scp``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import decode, encode
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicomvault.archive import Archive, IndexUnavailableError
from dicomvault.audit import ActorKind, AuditAction, AuditEvent, AuditEventType, AuditOutcome
from dicomvault.dicom.attributes import UNIQUE_KEYS, Level
from dicomvault.dicom.matching import MatchKind, Query, QueryError, parse_identifier
from dicomvault.dimse.access_control import AccessControl
from dicomvault.dimse.service_classes import route_sop_classes
from dicomvault.dimse.status import Status, shorten_comment
from dicomvault.dimse.store_sender import Originator, SendError, StoreSender
from dicomvault.dimse.tcp import disable_nagle
from dicomvault.dimse.tls import tls_args_for
from dicomvault.events import RetrievePerformed
from dicomvault.index.nodes import NodeRegistry
from dicomvault.nodes import RemoteNode
from dicomvault.permissions import Permission
from dicomvault.tls import TLSFileError
from dicomvault.transcode import (
    DECODING_PLUGINS,
    ConversionError,
    decompressed,
    rewound,
    swap_pixel_data_bytes,
)

LOGGER = logging.getLogger(__name__)

MOVE_MODELS = {
    str(PatientRootQueryRetrieveInformationModelMove): "PATIENT",
    str(StudyRootQueryRetrieveInformationModelMove): "STUDY",
}
GET_MODELS = {
    str(PatientRootQueryRetrieveInformationModelGet): "PATIENT",
    str(StudyRootQueryRetrieveInformationModelGet): "STUDY",
}
RETRIEVE_SOP_CLASSES = tuple(MOVE_MODELS) + tuple(GET_MODELS)
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
CONVERTIBLE = (*UNCOMPRESSED, ExplicitVRBigEndian)
# Pending responses are optional in the standard; one every 200 ms keeps
# progress displays current without a DIMSE message per instance.
PENDING_INTERVAL_SECONDS = 0.2
MAX_SUB_OPERATIONS = 65535  # Number of Remaining Sub-operations is US
MAX_PRESENTATION_CONTEXTS = 128  # PS3.8 9.3.2.2: odd context IDs 1 to 255


class RetrieveAE(AE):
    """An AE with references to the archive and its access control, for the retrieve service."""

    archive: Archive
    access: AccessControl


@dataclasses.dataclass
class SubOperationCounts:
    """Remaining, completed, failed and warning sub-operations, and the failed UIDs."""

    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = dataclasses.field(default_factory=list)

    def fail(self, sop_instance_uid: str) -> None:
        """Count one failed sub-operation."""
        self.remaining -= 1
        self.failed += 1
        self.failed_uids.append(sop_instance_uid)


@dataclasses.dataclass(frozen=True)
class InstanceToSend:
    """One stored instance selected by a retrieve request."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    storage_key: str
    study_instance_uid: str = ""
    size: int = 0


class RetrieveServiceClass(QueryRetrieveServiceClass):
    """Query/Retrieve service with the archive's C-MOVE and C-GET."""

    def _move_scp(self, req: C_MOVE, context: Any) -> None:
        _Retrieval(self, req, context, is_move=True).run()

    def _get_scp(self, req: C_GET, context: Any) -> None:
        _Retrieval(self, req, context, is_move=False).run()


def install_retrieve_service() -> None:
    """Route the C-MOVE and C-GET SOP classes to :class:`RetrieveServiceClass`."""
    route_sop_classes(RETRIEVE_SOP_CLASSES, RetrieveServiceClass)


class _Retrieval:
    """One C-MOVE or C-GET request, from identifier to final response."""

    def __init__(self, service: RetrieveServiceClass, req: Any, context: Any, is_move: bool):
        self.service = service
        self.req = req
        self.context = context
        self.is_move = is_move
        self.archive: Archive = service.ae.archive  # type: ignore[attr-defined]
        self.access: AccessControl = service.ae.access  # type: ignore[attr-defined]
        self.calling_ae = service.assoc.requestor.ae_title
        self.operation = "C-MOVE" if is_move else "C-GET"
        # The final response, for the RetrievePerformed event.
        self.final_status: int | None = None
        self.final_counts = SubOperationCounts(0)
        self.sent_size = 0

    # --- responses --------------------------------------------------------------------

    def respond(
        self,
        status: int,
        counts: SubOperationCounts | None = None,
        comment: str = "",
        final: bool = True,
    ) -> None:
        """Send one C-MOVE-RSP or C-GET-RSP on the requesting association."""
        rsp = C_MOVE() if self.is_move else C_GET()
        rsp.MessageIDBeingRespondedTo = self.req.MessageID
        rsp.AffectedSOPClassUID = self.req.AffectedSOPClassUID
        rsp.Status = status
        if comment:
            rsp.ErrorComment = shorten_comment(comment)  # type: ignore[assignment]
        if counts is not None:
            if not final or status == Status.CANCEL:
                rsp.NumberOfRemainingSuboperations = counts.remaining
            rsp.NumberOfCompletedSuboperations = counts.completed
            rsp.NumberOfFailedSuboperations = counts.failed
            rsp.NumberOfWarningSuboperations = counts.warning
            if final and counts.failed_uids:
                ds = Dataset()
                ds.FailedSOPInstanceUIDList = counts.failed_uids
                syntax = self.context.transfer_syntax[0]
                encoded = encode(
                    ds, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
                )
                rsp.Identifier = BytesIO(encoded or b"")
        self.service.dimse.send_msg(rsp, self.context.context_id)
        if final:
            self.final_status = status
            if counts is not None:
                self.final_counts = counts
        # pynetdicom restarts the network timeout only when a PDU arrives, and
        # a requestor sends nothing while it waits for a long retrieve. Without
        # this, a retrieve longer than network_timeout ends in an A-ABORT.
        self.service.assoc.dul._idle_timer.restart()

    # --- the operation ----------------------------------------------------------------

    def run(self) -> None:
        """Check the permission, resolve the identifier, run the sub-operations, respond.

        A caller without the retrieve permission gets 0x0124 (Refused: Not
        authorized, PS3.7 C.5) with an Error Comment and no sub-operation.
        A :class:`~dicomvault.events.RetrievePerformed` event follows the
        final response, also after a failure.
        """
        started = time.perf_counter()
        try:
            self._run()
        finally:
            counts = self.final_counts
            self.archive.events.publish(
                RetrievePerformed(
                    operation=self.operation,
                    source_ae_title=self.calling_ae,
                    status=self.final_status,
                    completed=counts.completed,
                    failed=counts.failed,
                    warning=counts.warning,
                    size=self.sent_size,
                    duration=time.perf_counter() - started,
                )
            )

    def _run(self) -> None:
        refusal = self.access.check_permission(
            self.service.assoc, Permission.RETRIEVE, self.operation
        )
        if refusal is not None:
            self.respond(Status.NOT_AUTHORIZED, comment=refusal)
            return

        try:
            instances = self.select_instances()
        except QueryError as exc:
            LOGGER.error(
                "%s from %s rejected with 0xA900: %s", self.operation, self.calling_ae, exc
            )
            self.respond(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, comment=str(exc))
            return
        except IndexUnavailableError as exc:
            LOGGER.error("%s from %s failed: %s", self.operation, self.calling_ae, exc)
            self.respond(Status.UNABLE_TO_PROCESS, comment="The index database failed")
            return
        if len(instances) > MAX_SUB_OPERATIONS:
            self.respond(
                Status.UNABLE_TO_CALCULATE_MATCHES,
                comment=f"More than {MAX_SUB_OPERATIONS} instances match; retrieve fewer at a time",
            )
            return

        if self.is_move:
            self.run_move(instances)
        else:
            self.run_get(instances)

    def select_instances(self) -> list[InstanceToSend]:
        """Decode the identifier and list the instances it selects.

        Raises
        ------
        QueryError
            If the identifier cannot be decoded, has no valid level, or lacks
            the unique key of its level.
        """
        syntax = self.context.transfer_syntax[0]
        try:
            identifier = decode(
                self.req.Identifier,
                syntax.is_implicit_VR,
                syntax.is_little_endian,
                syntax.is_deflated,
            )
        except Exception as exc:  # pydicom raises many types for undecodable bytes
            raise QueryError(f"Cannot decode the identifier: {exc}") from exc
        if identifier is None:
            raise QueryError("Cannot decode the identifier")

        models = MOVE_MODELS if self.is_move else GET_MODELS
        model = models.get(str(self.req.AffectedSOPClassUID), "STUDY")
        query = parse_identifier(identifier, model)
        _require_unique_key(query)

        # Every instance below the requested entities, in insertion order.
        image_query = Query(Level.IMAGE, query.conditions, (), model)
        return [
            InstanceToSend(
                sop_instance_uid=result.record["SOPInstanceUID"][0],
                sop_class_uid=result.record["SOPClassUID"][0],
                transfer_syntax_uid=result.transfer_syntax_uid,
                storage_key=result.storage_key,
                study_instance_uid=result.record["StudyInstanceUID"][0],
                size=result.size,
            )
            for result in self.archive.search(image_query)
        ]

    def run_move(self, instances: list[InstanceToSend]) -> None:
        destination_title = str(self.req.MoveDestination or "").strip()
        node = NodeRegistry(self.archive.engine).get(destination_title)
        if node is None:
            LOGGER.error(
                "C-MOVE from %s to unknown destination %r", self.calling_ae, destination_title
            )
            self.respond(
                Status.MOVE_DESTINATION_UNKNOWN,
                comment=f"Unknown move destination {destination_title}; "
                "register it with 'dicomvault node add'",
            )
            return
        if not instances:
            self.respond(Status.SUCCESS, SubOperationCounts(0))
            return

        store_assoc = self.associate(node, instances)
        if store_assoc is None:
            counts = SubOperationCounts(len(instances))
            for item in instances:
                counts.fail(item.sop_instance_uid)
            self.respond(
                Status.UNABLE_TO_PERFORM_SUB_OPERATIONS,
                counts,
                comment=f"Cannot associate with {node.describe()}",
            )
            return
        try:
            with StoreSender(store_assoc) as sender:
                self.send_all(sender, instances)
        except SendError as exc:
            LOGGER.error("C-MOVE from %s to %s failed: %s", self.calling_ae, node.describe(), exc)
            counts = SubOperationCounts(len(instances))
            for item in instances:
                counts.fail(item.sop_instance_uid)
            self.respond(Status.UNABLE_TO_PERFORM_SUB_OPERATIONS, counts, comment=str(exc))
        finally:
            if store_assoc.is_established:
                store_assoc.release()

    def run_get(self, instances: list[InstanceToSend]) -> None:
        if not instances:
            self.respond(Status.SUCCESS, SubOperationCounts(0))
            return
        with StoreSender(self.service.assoc) as sender:
            self.send_all(sender, instances)

    def associate(self, node: RemoteNode, instances: list[InstanceToSend]) -> Any:
        """Open the association for the C-STORE sub-operations, or return None."""
        ae = AE(ae_title=self.archive.settings.dimse.ae_title)
        settings = self.archive.settings.dimse
        ae.acse_timeout = settings.acse_timeout
        ae.dimse_timeout = settings.dimse_timeout
        ae.network_timeout = settings.network_timeout
        for abstract_syntax, syntaxes in proposed_contexts(instances):
            ae.add_requested_context(abstract_syntax, syntaxes)
        try:
            tls_args = tls_args_for(node)
        except TLSFileError as exc:
            LOGGER.error(
                "C-MOVE from %s: cannot use TLS with %s: %s", self.calling_ae, node.describe(), exc
            )
            return None
        assoc = ae.associate(node.host, node.port, ae_title=node.ae_title, tls_args=tls_args)
        if not assoc.is_established:
            LOGGER.error(
                "C-MOVE from %s: cannot associate with %s%s",
                self.calling_ae,
                node.describe(),
                " over TLS" if tls_args is not None else "",
            )
            return None
        disable_nagle(assoc)
        LOGGER.info(
            "C-MOVE from %s: sending %d instances to %s",
            self.calling_ae,
            len(instances),
            node.describe(),
        )
        return assoc

    def send_all(self, sender: StoreSender, instances: list[InstanceToSend]) -> None:
        """Run the C-STORE sub-operations, with pending responses at most every 200 ms."""
        counts = SubOperationCounts(len(instances))
        last_pending = 0.0
        for number, item in enumerate(instances, start=1):
            if self.service.is_cancelled(self.req.MessageID):
                LOGGER.info(
                    "%s from %s cancelled with %d instances left",
                    self.operation,
                    self.calling_ae,
                    counts.remaining,
                )
                self.respond(Status.CANCEL, counts)
                self.audit(instances, counts)
                return
            if not sender.assoc.is_established:
                counts.fail(item.sop_instance_uid)
                continue
            status = self.send_one(sender, item, message_id=number)
            counts.remaining -= 1
            if status is None or _is_failure(status):
                counts.failed += 1
                counts.failed_uids.append(item.sop_instance_uid)
            elif status == Status.SUCCESS:
                counts.completed += 1
                self.sent_size += item.size
            else:
                counts.warning += 1
                self.sent_size += item.size
            now = time.monotonic()
            if counts.remaining and now - last_pending >= PENDING_INTERVAL_SECONDS:
                self.respond(Status.PENDING, counts, final=False)
                last_pending = now
        self.respond(_final_status(counts), counts)
        self.audit(instances, counts)
        LOGGER.info(
            "%s from %s finished: %d completed, %d failed, %d warnings",
            self.operation,
            self.calling_ae,
            counts.completed,
            counts.failed,
            counts.warning,
        )

    def audit(self, instances: list[InstanceToSend], counts: SubOperationCounts) -> None:
        """Publish the transfer as a "DICOM Instances Transferred" audit event (read)."""
        if counts.failed == 0 and counts.remaining == 0:
            outcome = AuditOutcome.SUCCESS
        else:
            outcome = AuditOutcome.MINOR_FAILURE
        destination = str(self.req.MoveDestination or "").strip() if self.is_move else ""
        description = (
            f"{self.operation} sent {counts.completed + counts.warning} of "
            f"{len(instances)} instances" + (f" to {destination}" if destination else "")
        )
        self.archive.events.publish(
            AuditEvent(
                AuditEventType.INSTANCES_TRANSFERRED,
                AuditAction.READ,
                outcome,
                actor=self.calling_ae or "unknown",
                actor_kind=ActorKind.NODE,
                description=description,
                source=str(self.service.assoc.requestor.address),
                study_uids=tuple(sorted({i.study_instance_uid for i in instances} - {""})),
                detail={
                    "operation": self.operation,
                    "destination": destination,
                    "completed": counts.completed,
                    "failed": counts.failed,
                    "warning": counts.warning,
                },
            )
        )

    def send_one(self, sender: StoreSender, item: InstanceToSend, message_id: int) -> int | None:
        """Send one instance; return the C-STORE status, or None if it could not be sent."""
        contexts = accepted_contexts(sender.assoc, item.sop_class_uid)
        if not contexts:
            LOGGER.warning(
                "%s: the peer accepted no presentation context for %s; %s not sent",
                self.operation,
                item.sop_class_uid,
                item.sop_instance_uid,
            )
            return None
        originator = Originator(self.calling_ae, self.req.MessageID) if self.is_move else None
        storage = self.archive.storage
        # Deflated datasets are re-encoded: some senders store an odd-length
        # deflated stream, and DCMTK rejects odd-length message fragments.
        as_stored = contexts.get(item.transfer_syntax_uid)
        try:
            with storage.open(item.storage_key) as stream:
                if as_stored is not None and not _is_deflated(item.transfer_syntax_uid):
                    outcome = sender.send_file(
                        as_stored,
                        item.sop_class_uid,
                        item.sop_instance_uid,
                        stream,
                        message_id,
                        originator,
                        path=storage.plain_path(item.storage_key),
                    )
                else:
                    dataset, context_id = convert_for(stream, contexts)
                    outcome = sender.send_dataset(context_id, dataset, message_id, originator)
        except ConversionError as exc:
            LOGGER.warning(
                "%s: cannot convert %s for the peer: %s", self.operation, item.sop_instance_uid, exc
            )
            return None
        except (OSError, ValueError, SendError) as exc:
            LOGGER.warning("%s: sending %s failed: %s", self.operation, item.sop_instance_uid, exc)
            return None
        if outcome.status != Status.SUCCESS:
            LOGGER.warning(
                "%s: the peer answered 0x%04X to %s (%s)",
                self.operation,
                outcome.status,
                item.sop_instance_uid,
                outcome.error_comment or "no Error Comment",
            )
        return outcome.status


def convert_for(source: Path | BinaryIO, accepted: dict[str, int]) -> tuple[Dataset, int]:
    """Read a stored file and prepare it for sending in one of the ``accepted`` syntaxes.

    ``source`` is the file's path, or a seekable stream of the file.

    ``accepted`` maps transfer syntax UID to presentation context ID.
    Compressed pixel data is decompressed (pylibjpeg plugins). The dataset
    is then converted for the first accepted of Explicit VR Little Endian,
    Implicit VR Little Endian and Explicit VR Big Endian; the context ID of
    that syntax is returned with it.

    Raises
    ------
    ConversionError
        If no uncompressed syntax is accepted or decoding fails.
    """
    targets = [syntax for syntax in CONVERTIBLE if syntax in accepted]
    if not targets:
        raise ConversionError(
            f"the peer accepts only {', '.join(sorted(accepted))}, "
            "and the archive converts only to uncompressed transfer syntaxes"
        )
    target = targets[0]
    ds: Dataset = pydicom.dcmread(rewound(source))
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed:
        ds = decompressed(source, ds)
    # Encode in the target syntax and read back, so the dataset pynetdicom
    # sends has the target as its original encoding.
    for _ in ds.iterall():
        pass  # decodes every raw element, so none is copied in the old encoding
    if not syntax.is_little_endian and target.is_little_endian:
        swap_pixel_data_bytes(ds)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = target.is_implicit_VR
    buffer.is_little_endian = target.is_little_endian
    write_dataset(buffer, ds)
    converted = read_dataset(
        BytesIO(buffer.getvalue()), target.is_implicit_VR, target.is_little_endian
    )
    converted.file_meta = ds.file_meta
    converted.file_meta.TransferSyntaxUID = target
    return converted, accepted[target]


def proposed_contexts(instances: list[InstanceToSend]) -> Iterator[tuple[str, list[str]]]:
    """Return presentation contexts for the sub-operations.

    Each SOP class gets one context per stored transfer syntax other than
    Explicit and Implicit VR Little Endian, and one context with those two.
    At most 128 contexts are proposed, and instances of the classes left out
    fail.
    """
    by_class: dict[str, set[str]] = {}
    for item in instances:
        by_class.setdefault(item.sop_class_uid, set()).add(item.transfer_syntax_uid)
    contexts: list[tuple[str, list[str]]] = []
    for sop_class, syntaxes in by_class.items():
        for syntax in sorted(syntaxes):
            if syntax not in UNCOMPRESSED:
                contexts.append((sop_class, [syntax]))
        contexts.append((sop_class, [str(s) for s in UNCOMPRESSED]))
    if len(contexts) > MAX_PRESENTATION_CONTEXTS:
        LOGGER.warning(
            "Retrieve needs %d presentation contexts; proposing the first %d",
            len(contexts),
            MAX_PRESENTATION_CONTEXTS,
        )
    yield from contexts[:MAX_PRESENTATION_CONTEXTS]


def accepted_contexts(assoc: Any, sop_class_uid: str) -> dict[str, int]:
    """Map each transfer syntax accepted for sending ``sop_class_uid`` to its context ID."""
    contexts: dict[str, int] = {}
    for context in assoc.accepted_contexts:
        if context.abstract_syntax != sop_class_uid:
            continue
        # On a C-GET association the archive is the acceptor and needs the SCU role.
        if assoc.is_acceptor and not context.as_scu:
            continue
        contexts.setdefault(str(context.transfer_syntax[0]), context.context_id)
    return contexts


def _require_unique_key(query: Query) -> None:
    keyword = UNIQUE_KEYS[query.level]
    for condition in query.conditions:
        if condition.keyword == keyword and condition.kind in (MatchKind.SINGLE, MatchKind.LIST):
            return
    raise QueryError(f"{query.level.name} level retrieve needs {keyword} (UID or list)")


@functools.cache
def _is_deflated(transfer_syntax_uid: str) -> bool:
    return bool(UID(transfer_syntax_uid).is_deflated)


def _is_failure(status: int) -> bool:
    return not (status == Status.SUCCESS or 0xB000 <= status <= 0xBFFF)


def _final_status(counts: SubOperationCounts) -> int:
    if counts.failed == 0 and counts.warning == 0:
        return Status.SUCCESS
    if counts.completed == 0 and counts.warning == 0:
        return Status.UNABLE_TO_PERFORM_SUB_OPERATIONS
    return Status.SUB_OPERATIONS_WARNING


__all__ = [
    "DECODING_PLUGINS",
    "RETRIEVE_SOP_CLASSES",
    "ConversionError",
    "RetrieveAE",
    "decompressed",
    "install_retrieve_service",
]
