"""ASGI middleware that counts HTTP requests, their latency and response bytes."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomvault.metrics.definitions import ArchiveMetrics

LOGGER = logging.getLogger(__name__)

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Route label of requests that matched no route, so that scanned paths do
# not each create a time series.
UNMATCHED_ROUTE = "unmatched"


class HttpMetricsMiddleware:
    """Records each HTTP request in :class:`ArchiveMetrics` after its response.

    Requests are labelled with the template of the route that handled them
    (``/dicomweb/studies/{study}``), never the raw path, so that the number
    of time series stays bounded. A request that raised before any response
    counts with status 500, the status that the server then sends.
    """

    def __init__(self, app: ASGIApp, metrics: ArchiveMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on to the application and record it when it ends."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        status = 500
        body_bytes = 0

        async def send_counting(message: Message) -> None:
            nonlocal status, body_bytes
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                body_bytes += len(message.get("body", b""))
            await send(message)

        metrics = self.metrics
        metrics.http_in_progress.inc()
        try:
            await self.app(scope, receive, send_counting)
        finally:
            metrics.http_in_progress.dec()
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            route = route_template(scope)
            metrics.http_requests.labels(method, route, str(status)).inc()
            metrics.http_duration.labels(method, route).observe(time.perf_counter() - started)
            metrics.http_response_bytes.labels(method, route).inc(body_bytes)


def route_template(scope: Scope) -> str:
    """Return the request's path with each path parameter's value replaced by ``{name}``.

    "unmatched" when no route matched. The route object in the scope is not
    used for its path: FastAPI 0.165 puts there the route of an included
    router, whose path lacks the router's prefix.
    """
    if scope.get("route") is None:
        return UNMATCHED_ROUTE
    path: str = scope.get("path", "")
    # Parameters are in the order of the route's path, so the last one is the
    # rightmost. Each is looked for to the left of the one replaced before.
    limit = len(path)
    for name, value in reversed(list((scope.get("path_params") or {}).items())):
        segment = f"/{value}"
        start = path.rfind(segment, 0, limit)
        while start >= 0 and not _ends_segment(path, start + len(segment)):
            start = path.rfind(segment, 0, start + len(segment) - 1)
        if start < 0:
            continue
        path = f"{path[:start]}/{{{name}}}{path[start + len(segment) :]}"
        limit = start
    return path


def _ends_segment(path: str, index: int) -> bool:
    return index == len(path) or path[index] == "/"
