"""Leases in the index database: which server process holds a piece of work, until when.

Several ``dicomvault serve`` processes share one index database. Work that
must run once at a time (a task, a watched folder, the periodic
maintenance) is done by the process holding its lease. The holder renews
the lease well before it expires. A process that dies stops renewing it,
so another process takes the work over once the lease has expired.

Expiry times are written by each process from its own clock, so the
clocks of the machines must agree to well within the lease duration
(``server.lease_seconds``), as NTP keeps them.
"""

from __future__ import annotations

import datetime
import logging
import os
import secrets
import socket
from collections.abc import Iterable

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from dicomvault.index.schema import leases

LOGGER = logging.getLogger(__name__)

_PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def process_id() -> str:
    """Return the id this process holds leases under: "host:pid:random".

    The random part distinguishes two processes with the same host name
    and process id, as containers restarted on one host may have.
    """
    return _PROCESS_ID


class LeaseStore:
    """Acquires, renews and releases leases by name."""

    def __init__(self, engine: Engine, owner: str | None = None) -> None:
        self.engine = engine
        self.owner = owner or process_id()

    def acquire(self, name: str, seconds: float) -> bool:
        """Take the lease ``name`` for ``seconds`` if it is free, expired or already ours.

        Returns whether this process holds the lease now.
        """
        now = _now()
        expires = now + datetime.timedelta(seconds=seconds)
        table = leases
        dialect = self.engine.dialect.name
        insert_module = postgresql if dialect == "postgresql" else sqlite
        statement = insert_module.insert(table).values(
            name=name, owner=self.owner, expires_at=expires
        )
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.name],
            set_={"owner": self.owner, "expires_at": expires},
            where=(table.c.owner == self.owner) | (table.c.expires_at < now),
        ).returning(table.c.owner)
        try:
            with (
                self.engine.connect().execution_options(write=True) as connection,
                connection.begin(),
            ):
                held = connection.execute(statement).scalar_one_or_none() == self.owner
        except IntegrityError:  # another process inserted it at the same moment
            return False
        if held:
            LOGGER.debug("Lease %s held by %s for %.0f s", name, self.owner, seconds)
        return held

    def renew(self, names: Iterable[str], seconds: float) -> set[str]:
        """Extend the leases of ``names`` this process still holds; return those it holds."""
        wanted = list(names)
        if not wanted:
            return set()
        expires = _now() + datetime.timedelta(seconds=seconds)
        with (
            self.engine.connect().execution_options(write=True) as connection,
            connection.begin(),
        ):
            rows = connection.execute(
                update(leases)
                .where(leases.c.name.in_(wanted), leases.c.owner == self.owner)
                .values(expires_at=expires)
                .returning(leases.c.name)
            ).all()
        held = {row.name for row in rows}
        for name in set(wanted) - held:
            LOGGER.warning("Lease %s was lost: another process took it over", name)
        return held

    def release(self, name: str) -> None:
        """Give up the lease ``name`` if this process holds it."""
        with (
            self.engine.connect().execution_options(write=True) as connection,
            connection.begin(),
        ):
            connection.execute(
                delete(leases).where(leases.c.name == name, leases.c.owner == self.owner)
            )

    def holder(self, name: str) -> str | None:
        """Return the owner of an unexpired lease ``name``, or None."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(leases.c.owner, leases.c.expires_at).where(leases.c.name == name)
            ).first()
        if row is None or _aware(row.expires_at) < _now():
            return None
        return str(row.owner)


def _aware(moment: datetime.datetime) -> datetime.datetime:
    # SQLite returns naive datetimes; the index stores UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
