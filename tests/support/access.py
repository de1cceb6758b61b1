"""Access control for handler tests that call the SCP handlers without a server."""

from __future__ import annotations

from types import SimpleNamespace

from dicomvault.access import Grant
from dicomvault.archive import Archive
from dicomvault.dimse.access_control import AccessControl
from dicomvault.permissions import ALL_PERMISSIONS, Permission


class FakeAssociation:
    """The association attributes the handlers read; weak references work on it."""

    def __init__(self, ae_title: str = "TESTSCU", address: str = "127.0.0.1") -> None:
        self.requestor = SimpleNamespace(ae_title=ae_title, address=address)


def granted_access(
    archive: Archive,
    assoc: FakeAssociation,
    permissions: frozenset[Permission] = ALL_PERMISSIONS,
    registered: bool = True,
) -> AccessControl:
    """Return access control on which ``assoc`` was admitted with ``permissions``."""
    access = AccessControl(archive)
    access.record_grant(assoc, Grant(assoc.requestor.ae_title, permissions, registered))
    return access
