"""The registry of remote DICOM nodes, kept in the index database."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable

from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import IntegrityError

from dicomvault.index.schema import nodes
from dicomvault.nodes import RemoteNode
from dicomvault.permissions import Permission

LOGGER = logging.getLogger(__name__)


class NodeExistsError(ValueError):
    """A node with this AE title is already registered."""


class NodeNotFoundError(KeyError):
    """No node with this AE title is registered."""


class NodeRegistry:
    """Adds, lists, finds and removes remote nodes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, node: RemoteNode, replace: bool = False) -> None:
        """Register a node; with ``replace``, update the node of the same AE title.

        Raises
        ------
        NodeExistsError
            If the AE title is registered and ``replace`` is False.
        """
        row = {
            "ae_title": node.ae_title,
            "host": node.host,
            "port": node.port,
            "description": node.description,
            "tls": node.tls,
            "tls_ca_file": node.tls_ca_file,
            "tls_cert_file": node.tls_cert_file,
            "tls_key_file": node.tls_key_file,
            "allow_store": Permission.STORE in node.permissions,
            "allow_query": Permission.QUERY in node.permissions,
            "allow_retrieve": Permission.RETRIEVE in node.permissions,
            "source_addresses": ",".join(node.source_addresses),
            "tls_client_subject": node.tls_client_subject,
            "updated_at": datetime.datetime.now(datetime.UTC),
        }
        with (
            self.engine.connect().execution_options(write=True) as connection,
            connection.begin(),
        ):
            existing = connection.execute(
                select(nodes.c.pk).where(nodes.c.ae_title == node.ae_title)
            ).first()
            if existing is not None and not replace:
                raise NodeExistsError(node.ae_title)
            if existing is None:
                try:
                    connection.execute(nodes.insert().values(**row))
                except IntegrityError:
                    raise NodeExistsError(node.ae_title) from None
            else:
                connection.execute(nodes.update().where(nodes.c.pk == existing.pk).values(**row))
        LOGGER.info(
            "Registered node %s%s; %s", node.describe(), node.describe_tls(), node.describe_access()
        )

    def add_all(self, configured: Iterable[RemoteNode]) -> None:
        """Register or update each node of the configuration file."""
        for node in configured:
            self.add(node, replace=True)

    def get(self, ae_title: str) -> RemoteNode | None:
        """Return the node registered with ``ae_title``, or None."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(nodes).where(nodes.c.ae_title == ae_title.strip())
            ).first()
        return None if row is None else _node(row)

    def list(self) -> list[RemoteNode]:
        """Return every registered node, sorted by AE title."""
        with self.engine.connect() as connection:
            rows = connection.execute(select(nodes).order_by(nodes.c.ae_title)).all()
        return [_node(row) for row in rows]

    def remove(self, ae_title: str) -> None:
        """Remove the node registered with ``ae_title``.

        Raises
        ------
        NodeNotFoundError
            If no node has this AE title.
        """
        with (
            self.engine.connect().execution_options(write=True) as connection,
            connection.begin(),
        ):
            result = connection.execute(delete(nodes).where(nodes.c.ae_title == ae_title.strip()))
        if result.rowcount == 0:
            raise NodeNotFoundError(ae_title)
        LOGGER.info("Removed node %s", ae_title)


def _node(row: object) -> RemoteNode:
    allowed = {
        Permission.STORE: row.allow_store,  # type: ignore[attr-defined]
        Permission.QUERY: row.allow_query,  # type: ignore[attr-defined]
        Permission.RETRIEVE: row.allow_retrieve,  # type: ignore[attr-defined]
    }
    addresses = row.source_addresses  # type: ignore[attr-defined]
    return RemoteNode(
        ae_title=row.ae_title,  # type: ignore[attr-defined]
        host=row.host,  # type: ignore[attr-defined]
        port=row.port,  # type: ignore[attr-defined]
        description=row.description,  # type: ignore[attr-defined]
        tls=bool(row.tls),  # type: ignore[attr-defined]
        tls_ca_file=row.tls_ca_file,  # type: ignore[attr-defined]
        tls_cert_file=row.tls_cert_file,  # type: ignore[attr-defined]
        tls_key_file=row.tls_key_file,  # type: ignore[attr-defined]
        permissions=frozenset(permission for permission, on in allowed.items() if on),
        source_addresses=tuple(item for item in addresses.split(",") if item),
        tls_client_subject=row.tls_client_subject,  # type: ignore[attr-defined]
    )
