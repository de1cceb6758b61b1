"""Build the FastAPI application: the admin REST API and the DICOMweb services."""

from __future__ import annotations

import logging

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from dicomvault import __version__
from dicomvault.archive import Archive
from dicomvault.audit import AuditTrail
from dicomvault.dimse.service import DimseService
from dicomvault.index.saved_settings import SavedSettings
from dicomvault.index.users import UserStore
from dicomvault.ingest.manager import TaskManager
from dicomvault.metrics import ArchiveMetrics, HttpMetricsMiddleware, subscribe_metrics
from dicomvault.readiness import ReadinessChecker
from dicomvault.recent_logs import RecentLogHandler
from dicomvault.web import health
from dicomvault.web.api import (
    account,
    archives,
    audit,
    dimse,
    logs,
    nodes,
    search,
    studies,
    tasks,
    usage,
)
from dicomvault.web.auth import Authenticator, OpenAccess, UserAuthenticator
from dicomvault.web.dicomweb.errors import install_error_handlers
from dicomvault.web.dicomweb.routers import include_dicomweb
from dicomvault.web.identity import require_admin
from dicomvault.web.limits import RequestLimitsMiddleware
from dicomvault.web.oidc import install_oidc
from dicomvault.web.ui import include_console

LOGGER = logging.getLogger(__name__)

# Response headers a browser application on another origin may read.
CORS_EXPOSED_HEADERS = ["Content-Type", "Content-Length", "Content-Location", "Location", "Warning"]


def create_app(
    manager: TaskManager,
    archive: Archive,
    authenticator: Authenticator | None = None,
    *,
    dimse_service: DimseService | None = None,
    recent_logs: RecentLogHandler | None = None,
    readiness: ReadinessChecker | None = None,
    metrics: ArchiveMetrics | None = None,
) -> FastAPI:
    """Return the application serving the REST API, DICOMweb and the console, with docs at /docs.

    DICOMweb is under /dicomweb, WADO-URI at /wado and the browser console
    under /console (``/`` redirects there). ``authenticator``
    decides who may use DICOMweb; the default follows the setting
    ``http.dicomweb_access``: everyone ("open") or the archive's users.
    ``dimse_service`` controls the running DIMSE service; without one,
    changes to its settings are only saved for the next start.
    ``recent_logs`` serves GET /api/logs; without it that route answers 503.
    ``readiness`` answers /ready; without it, a checker of the archive's
    index database and storage is made. ``metrics`` are served at
    /metrics and fed by a middleware for every HTTP request; without them,
    new metrics are made and subscribed to ``archive.events``.

    The admin API (/api) and the console require a login (the console a
    session, the API a session or an API token); /health and /ready do
    not, and /metrics only with ``http.metrics_access = "users"``. With
    ``http.dicomweb_access = "open"`` (the default), anyone who can connect
    may read and store every instance over DICOMweb; the settings allow
    that only while ``http.host`` is a loopback address.
    """
    app = FastAPI(
        title="dicomvault",
        version=__version__,
        description="Administration API and DICOMweb services of the dicomvault DICOM archive.",
    )
    app.state.manager = manager
    app.state.archive = archive
    if authenticator is None:
        users_only = archive.settings.http.dicomweb_access == "users"
        authenticator = UserAuthenticator() if users_only else OpenAccess()
    app.state.authenticator = authenticator
    app.state.users = UserStore(archive.engine)
    app.state.audit = AuditTrail(archive.engine)  # reads only; serve runs the writer
    app.state.dimse = dimse_service or DimseService(
        archive, archive.settings, SavedSettings(archive.engine)
    )
    app.state.recent_logs = recent_logs
    app.state.readiness = readiness or ReadinessChecker(
        archive.engine, archive.storage, archive.settings.server.readiness_timeout
    )
    if metrics is None:
        metrics = ArchiveMetrics(process_collectors=False)
        subscribe_metrics(metrics, archive.events)
        if manager is not None:
            metrics.watch_ingest_queue(manager.queued_tasks)
        checker = app.state.readiness
        metrics.watch_draining(lambda: checker.draining)
    app.state.metrics = metrics
    app.include_router(account.router)
    app.include_router(search.router)
    app.include_router(archives.router)
    app.include_router(tasks.router, dependencies=[Depends(require_admin)])
    app.include_router(audit.router, dependencies=[Depends(require_admin)])
    # The management routers take the admin as a parameter, for their logs.
    for router in (dimse.router, nodes.router, usage.router, logs.router, studies.router):
        app.include_router(router)
    app.include_router(health.router)
    if app.state.users.count_admins() == 0:
        LOGGER.warning(
            "No admin user exists, so nobody can use the admin API; "
            "create one with 'dicomvault user add NAME --role admin'"
        )
    include_dicomweb(app)
    include_console(app)
    http_settings = archive.settings.http
    https_only = bool(http_settings.tls_cert_file) or http_settings.public_url.startswith("https:")
    install_oidc(app, archive.settings.auth, https_only=https_only)
    install_error_handlers(app)

    origins = archive.settings.http.cors_allow_origins
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Accept", "Authorization", "Content-Type"],
            expose_headers=CORS_EXPOSED_HEADERS,
        )
        LOGGER.info("CORS allows origins %s", ", ".join(origins))
    app.add_middleware(
        RequestLimitsMiddleware,
        max_request_size=http_settings.max_request_size,
        max_concurrent_requests=http_settings.max_concurrent_requests,
        read_timeout=http_settings.read_timeout,
    )
    # Added last, so that it runs outside the other middleware and counts their responses too.
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    return app
