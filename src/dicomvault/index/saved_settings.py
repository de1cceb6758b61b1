"""Settings changed through the HTTP API, kept in the index database across restarts."""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine, delete, select

from dicomvault.index.schema import saved_settings

LOGGER = logging.getLogger(__name__)


class SavedSettings:
    """Reads, saves and clears settings by dotted name (``"dimse.port"``).

    Values are stored as JSON text and returned as they were saved; the
    caller validates them with the setting's parser before use.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def load(self) -> dict[str, Any]:
        """Return every saved setting by dotted name.

        A value that is not valid JSON is skipped with a warning, so that a
        damaged row cannot stop the server from starting.
        """
        with self.engine.connect() as connection:
            rows = connection.execute(select(saved_settings.c.name, saved_settings.c.value)).all()
        values: dict[str, Any] = {}
        for row in rows:
            try:
                values[row.name] = json.loads(row.value)
            except json.JSONDecodeError:
                LOGGER.warning("Ignoring saved setting %s: its value is not valid JSON", row.name)
        return values

    def save(self, values: Mapping[str, Any], user_name: str) -> None:
        """Insert or replace each setting of ``values`` in one transaction."""
        now = datetime.datetime.now(datetime.UTC)
        with (
            self.engine.connect().execution_options(write=True) as connection,
            connection.begin(),
        ):
            for name, value in values.items():
                row = {
                    "value": json.dumps(value),
                    "updated_by": user_name,
                    "updated_at": now,
                }
                updated = connection.execute(
                    saved_settings.update().where(saved_settings.c.name == name).values(**row)
                )
                if updated.rowcount == 0:
                    connection.execute(saved_settings.insert().values(name=name, **row))
        LOGGER.info("User %s saved settings %s", user_name, ", ".join(sorted(values)))

    def clear(self, names: list[str] | None = None) -> int:
        """Remove the saved settings of ``names``, or all of them; return how many were removed."""
        statement = delete(saved_settings)
        if names is not None:
            statement = statement.where(saved_settings.c.name.in_(names))
        with (
            self.engine.connect().execution_options(write=True) as connection,
            connection.begin(),
        ):
            removed = connection.execute(statement).rowcount
        return int(removed)
