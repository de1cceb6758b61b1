"""Settings of the running DIMSE service: read, change at once, save for the next start."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from dicomvault.archive import Archive
from dicomvault.config import (
    ConfigError,
    DimseSettings,
    Settings,
    apply_saved_settings,
    parse_setting,
)
from dicomvault.index.saved_settings import SavedSettings

if TYPE_CHECKING:
    from dicomvault.dimse.server import DimseServer

LOGGER = logging.getLogger(__name__)

# Keys of [dimse] that can be changed while the server runs.
CHANGEABLE_KEYS = ("ae_title", "host", "port", "allowed_calling_ae_titles", "unknown_callers")


class ListenError(Exception):
    """The DIMSE service cannot listen on the requested address; nothing was changed."""


@dataclasses.dataclass(frozen=True)
class DimseStatus:
    """The DIMSE service's settings, its state, and where each changeable setting came from.

    ``open_associations`` is None when this process does not run the service.
    """

    settings: DimseSettings
    running: bool
    open_associations: int | None
    sources: dict[str, str]


class DimseService:
    """Reads and changes the DIMSE service settings of a running archive.

    A change is validated, applied to the running server (when this process
    runs one), saved in the index database, and written into
    ``archive.settings``, so that the C-FIND, C-MOVE and C-ECHO code paths
    use the new AE title. Changes are serialized by a lock.

    With several servers on one index, a change applies at once to the
    server that received it. The others apply it when :meth:`follow_saved`
    next runs, every ``server.settings_poll_interval`` seconds. All then
    listen on the saved host and port, so a port change suits servers on
    separate machines.

    Parameters
    ----------
    archive : Archive
        The archive whose ``settings`` are replaced on each change.
    startup : Settings
        The settings from defaults, file, environment and options, without
        saved values; :meth:`reset` returns to them.
    saved : SavedSettings
        Where changes are kept for the next start.
    server : DimseServer, optional
        The running server; without one, changes are only saved.
    """

    def __init__(
        self,
        archive: Archive,
        startup: Settings,
        saved: SavedSettings,
        server: DimseServer | None = None,
    ) -> None:
        self.archive = archive
        self.startup = startup
        self.saved = saved
        self.server = server
        self._lock = threading.Lock()

    def status(self) -> DimseStatus:
        """Return the current settings and state of the service."""
        settings = self.archive.settings
        running = self.server is not None and self.server.is_running
        return DimseStatus(
            settings=settings.dimse,
            running=running,
            open_associations=self.server.open_associations() if self.server else None,
            sources={key: settings.sources[f"dimse.{key}"] for key in CHANGEABLE_KEYS},
        )

    def change(self, changes: Mapping[str, Any], user_name: str) -> DimseStatus:
        """Validate, apply and save changed settings of the DIMSE service.

        Parameters
        ----------
        changes : Mapping
            New values by key of :data:`CHANGEABLE_KEYS`.
        user_name : str
            The user making the change, recorded with the saved values.

        Raises
        ------
        ValueError
            If a key cannot be changed or a value is invalid; the message
            names the setting and the accepted form.
        ListenError
            If the new host and port cannot be bound.
        sqlalchemy.exc.SQLAlchemyError
            If saving fails; the running server is then set back.
        """
        values = {}
        for key, raw in changes.items():
            if key not in CHANGEABLE_KEYS:
                raise ValueError(
                    f"'dimse.{key}' cannot be changed while the server runs; "
                    f"changeable: {', '.join(CHANGEABLE_KEYS)}"
                )
            values[f"dimse.{key}"] = parse_setting(f"dimse.{key}", raw)

        with self._lock:
            current = self.archive.settings
            updated = apply_saved_settings(current, values)
            self._apply(current.dimse, updated.dimse)
            try:
                self.saved.save(values, user_name)
            except Exception:
                LOGGER.error("Saving the DIMSE settings failed; setting the service back")
                self._apply(updated.dimse, current.dimse)
                raise
            self.archive.settings = updated
        return self.status()

    def reset(self, user_name: str) -> DimseStatus:
        """Forget the saved DIMSE settings and return to the start-up settings.

        Raises
        ------
        ListenError
            If the start-up host and port cannot be bound; nothing changes.
        sqlalchemy.exc.SQLAlchemyError
            If the index database fails; the running server is then set back.
        """
        names = [f"dimse.{key}" for key in CHANGEABLE_KEYS]
        with self._lock:
            current = self.archive.settings
            sources = dict(current.sources)
            sources.update({name: self.startup.sources[name] for name in names})
            updated = dataclasses.replace(current, dimse=self.startup.dimse, sources=sources)
            self._apply(current.dimse, updated.dimse)
            try:
                removed = self.saved.clear(names)
            except Exception:
                self._apply(updated.dimse, current.dimse)
                raise
            self.archive.settings = updated
        LOGGER.info("User %s removed %d saved DIMSE settings", user_name, removed)
        return self.status()

    def follow_saved(self) -> bool:
        """Apply the saved DIMSE settings when they differ from those in effect.

        Another server sharing the index may have saved or reset them. Return
        whether anything changed.

        Raises
        ------
        ConfigError
            If a saved value is invalid; nothing changes.
        ListenError
            If the saved host and port cannot be bound; nothing changes.
        sqlalchemy.exc.SQLAlchemyError
            If the index database fails.
        """
        values = {
            name: value for name, value in self.saved.load().items() if name.startswith("dimse.")
        }
        saved_settings = apply_saved_settings(self.startup, values)
        with self._lock:
            current = self.archive.settings
            if saved_settings.dimse == current.dimse:
                return False
            self._apply(current.dimse, saved_settings.dimse)
            sources = dict(current.sources)
            sources.update(
                {f"dimse.{key}": saved_settings.sources[f"dimse.{key}"] for key in CHANGEABLE_KEYS}
            )
            self.archive.settings = dataclasses.replace(
                current, dimse=saved_settings.dimse, sources=sources
            )
        changed = [
            key
            for key in CHANGEABLE_KEYS
            if getattr(current.dimse, key) != getattr(saved_settings.dimse, key)
        ]
        LOGGER.info("Applied the DIMSE settings saved by another server: %s", ", ".join(changed))
        return True

    def _apply(self, current: DimseSettings, updated: DimseSettings) -> None:
        if self.server is None or not self.server.is_running:
            return
        try:
            self.server.apply(updated)
        except OSError as exc:
            # The server's ListenError names the address and the reason.
            reason = (
                str(exc)
                if exc.strerror is None
                else (f"Cannot listen on {updated.host}:{updated.port}: {exc.strerror}")
            )
            raise ListenError(
                f"{reason}; the DIMSE service still listens on {current.host}:{current.port}"
            ) from exc


class SavedSettingsFollower:
    """Applies the DIMSE settings that other servers on the index saved, at an interval."""

    def __init__(self, service: DimseService, interval: float) -> None:
        self.service = service
        self.interval = interval
        self._next = time.monotonic() + interval
        self._last_error = ""

    def poll(self) -> None:
        """Read and apply the saved settings if the interval has passed; log a failure once."""
        if not self.interval or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.interval
        try:
            self.service.follow_saved()
        except (ConfigError, ListenError, SQLAlchemyError) as exc:
            error = str(exc)
            if error != self._last_error:
                LOGGER.warning("Cannot apply the DIMSE settings saved in the index: %s", error)
            self._last_error = error
        else:
            self._last_error = ""
