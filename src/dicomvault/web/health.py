"""Routes for load balancers and monitoring: liveness (/health), readiness (/ready), /metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client.exposition import choose_encoder
from starlette.concurrency import run_in_threadpool

from dicomvault.metrics import ArchiveMetrics
from dicomvault.readiness import ReadinessChecker
from dicomvault.web.identity import current_user

LOGGER = logging.getLogger(__name__)

router = APIRouter(tags=["service"])

NO_STORE = {"Cache-Control": "no-store"}


@router.get("/health")
def health() -> dict[str, str]:
    """Report that the process is running (liveness; no login, no dependency checked).

    Notes
    -----
    - 200: always, with ``{"status": "ok"}``, while the HTTP server runs.
    """
    return {"status": "ok"}


@router.get("/ready")
def ready(request: Request) -> JSONResponse:
    """Report whether this process should receive new work (readiness; no login).

    The index database and the storage are checked at most once a second,
    each within ``server.readiness_timeout`` seconds. The body names each
    check with "ok", "failed", "timed out" or "full", never the error, which
    goes to the server log.

    Notes
    -----
    - 200: ``{"status": "ready", "checks": {"database": "ok", "storage": "ok"}}``.
    - 503: a check did not pass (``"status": "not ready"``), or the process
      received a stop signal and is draining (``"status": "draining"``).
    """
    checker: ReadinessChecker = request.app.state.readiness
    readiness = checker.check()
    return JSONResponse(
        {"status": readiness.status, "checks": dict(readiness.checks)},
        status_code=status.HTTP_200_OK if readiness.ready else status.HTTP_503_SERVICE_UNAVAILABLE,
        headers=NO_STORE,
    )


# Health checkers may send HEAD (HAProxy: option httpchk HEAD /ready). FastAPI
# routes accept only the methods they list, so HEAD has routes of its own.
router.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)
router.add_api_route("/ready", ready, methods=["HEAD"], include_in_schema=False)


@router.get("/metrics")
async def read_metrics(request: Request) -> Response:
    """Return the process's metrics in the Prometheus text format (or OpenMetrics on request).

    ``http.metrics_access`` decides who may read them: "users" (the
    default) requires an API token or a console session of any role,
    "open" lets anyone who can connect read them.

    Notes
    -----
    - 200: the metrics, as text/plain, or application/openmetrics-text when
      the Accept header requests it.
    - 401: ``http.metrics_access`` is "users" and the request has no valid
      token or session.
    """
    if request.app.state.archive.settings.http.metrics_access != "open":
        await run_in_threadpool(current_user, request)
    metrics: ArchiveMetrics = request.app.state.metrics
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    body = await run_in_threadpool(encoder, metrics.registry)
    return Response(body, media_type=content_type, headers=NO_STORE)
