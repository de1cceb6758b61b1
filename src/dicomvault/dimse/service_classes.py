"""Route SOP classes to the archive's own pynetdicom service classes.

pynetdicom picks the service class that handles a request with
``pynetdicom.association.uid_to_service_class``. The archive replaces it
once with a lookup in its own table, which defers to pynetdicom for every
SOP class that the table does not contain.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import pynetdicom.association

_ROUTES: dict[str, type[Any]] = {}
_LOCK = threading.Lock()


def route_sop_classes(sop_classes: Iterable[str], service_class: type[Any]) -> None:
    """Make pynetdicom handle requests on ``sop_classes`` with ``service_class``.

    Calling it again for the same SOP classes replaces their service class.
    """
    with _LOCK:
        _ROUTES.update({str(uid): service_class for uid in sop_classes})
        current = pynetdicom.association.uid_to_service_class  # type: ignore[attr-defined]
        if getattr(current, "_dicomvault_routes", False):
            return

        def service_class_for(uid: str) -> Any:
            routed = _ROUTES.get(str(uid))
            return routed if routed is not None else current(uid)

        service_class_for._dicomvault_routes = True  # type: ignore[attr-defined]
        pynetdicom.association.uid_to_service_class = service_class_for  # type: ignore[attr-defined]
