"""Periodic clean-up that one server process of those sharing the index runs at a time."""

from __future__ import annotations

import datetime
import logging

from sqlalchemy import Engine, delete
from sqlalchemy.exc import SQLAlchemyError

from dicomvault.cluster.leases import LeaseStore
from dicomvault.config import ServerSettings
from dicomvault.index.schema import sessions
from dicomvault.storage.base import Storage

LOGGER = logging.getLogger(__name__)

LEASE_NAME = "maintenance"
# Temporary files this old are left by a write that failed: no write takes an hour.
TEMPORARY_FILE_AGE_SECONDS = 3600.0


class Maintenance:
    """Removes expired console sessions and what interrupted writes left in the storage.

    Every server process calls :meth:`run_if_due` every
    ``server.maintenance_interval`` seconds; the one that takes the lease
    "maintenance" runs it, and holds the lease for most of the interval so
    that the others skip that round.
    """

    def __init__(self, engine: Engine, storage: Storage, settings: ServerSettings) -> None:
        self.engine = engine
        self.storage = storage
        self.interval = settings.maintenance_interval
        self.leases = LeaseStore(engine)

    def run_if_due(self) -> bool:
        """Run the clean-up if no other process ran it this round; return whether it ran."""
        try:
            if not self.leases.acquire(LEASE_NAME, self.interval * 0.9):
                return False
            self.run()
        except SQLAlchemyError as exc:
            LOGGER.error("Maintenance failed: the index database failed: %s", exc)
            return False
        except OSError as exc:
            LOGGER.error("Maintenance failed: the storage failed: %s", exc)
            return False
        return True

    def run(self) -> None:
        """Remove expired sessions and old temporary files now."""
        now = datetime.datetime.now(datetime.UTC)
        with (
            self.engine.connect().execution_options(write=True) as connection,
            connection.begin(),
        ):
            removed = connection.execute(delete(sessions).where(sessions.c.expires_at < now))
        remover = getattr(self.storage, "remove_temporary_files", None)
        leftovers = remover(older_than=TEMPORARY_FILE_AGE_SECONDS) if remover else 0
        LOGGER.info(
            "Maintenance by %s: removed %d expired sessions and %d temporary files",
            self.leases.owner,
            removed.rowcount,
            leftovers,
        )
