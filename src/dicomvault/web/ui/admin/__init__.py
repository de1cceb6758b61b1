"""Console pages for admins: DICOM service, nodes, tasks, storage, users, events, audit."""

from __future__ import annotations

from fastapi import APIRouter

from dicomvault.web.ui.admin import (
    audit_page,
    events_page,
    nodes_page,
    service_page,
    storage_page,
    tasks_page,
    users_page,
)

# Routers of the admin pages, each under /console/admin and for the admin role only.
ADMIN_ROUTERS: tuple[APIRouter, ...] = (
    service_page.router,
    nodes_page.router,
    tasks_page.router,
    storage_page.router,
    users_page.router,
    events_page.router,
    audit_page.router,
)
