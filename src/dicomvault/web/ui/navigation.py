"""Links of the console's navigation bar: the main pages and the admin's management pages."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class NavLink:
    """A link in the navigation bar; it is marked current on pages under ``path``."""

    label: str
    path: str


# Pages shown to every logged-in user.
MAIN_LINKS: tuple[NavLink, ...] = (NavLink("Search", "/console/search"),)

# Pages listed under "Management" for users with the admin role (web/ui/admin).
ADMIN_LINKS: tuple[NavLink, ...] = (
    NavLink("DICOM service", "/console/admin/service"),
    NavLink("Remote nodes", "/console/admin/nodes"),
    NavLink("Indexing tasks", "/console/admin/tasks"),
    NavLink("Storage", "/console/admin/storage"),
    NavLink("Users and tokens", "/console/admin/users"),
    NavLink("Events", "/console/admin/events"),
    NavLink("Audit trail", "/console/admin/audit"),
)
