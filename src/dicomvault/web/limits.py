"""HTTP request limits: body size, requests served at once, and the time to send a body."""

from __future__ import annotations

import asyncio
import logging
import re
import time

from starlette import status
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOGGER = logging.getLogger(__name__)

# Probes of load balancers and orchestrators are served even at the concurrency limit,
# so that a busy server is not taken for a dead one.
UNCOUNTED_PATHS = frozenset({"/health", "/ready"})
# STOW-RS (POST /dicomweb/studies[/{StudyInstanceUID}]) checks its own body limit,
# http.stow_max_request_size.
STOW_PATH = re.compile(r"^/dicomweb/studies(/[^/]+)?/?$")
# Seconds a client is asked to wait after a 503 at the concurrency limit.
RETRY_AFTER_SECONDS = 1
# A warning about requests rejected at the concurrency limit is logged at most this often.
REJECTION_LOG_INTERVAL_SECONDS = 10.0


class RequestLimitsMiddleware:
    """Applies ``http.max_request_size`` and ``http.max_concurrent_requests`` to each request.

    ``read_timeout`` (``http.read_timeout``) bounds the wait for each part
    of a request body.

    Notes
    -----
    Responses it produces:

    - 413 Content Too Large: the body of a request other than STOW-RS is
      larger than ``max_request_size`` bytes, by its Content-Length or by
      the bytes that arrived. The rest of the body is not read.
    - 503 Service Unavailable with Retry-After: ``max_concurrent_requests``
      requests are being served. /health and /ready are not counted.
    - 408 Request Timeout with Connection: close: the client sent no part
      of the body for ``read_timeout`` seconds.

    The 413 and 408 are raised as :class:`HTTPException` from the body
    read, so that the application's error handlers format them.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_request_size: int,
        max_concurrent_requests: int,
        read_timeout: float,
    ) -> None:
        self.app = app
        self.max_request_size = max_request_size
        self.max_concurrent_requests = max_concurrent_requests
        self.read_timeout = read_timeout
        self.in_flight = 0
        self._rejected_since_log = 0
        self._last_rejection_log = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request within the limits; other ASGI scopes pass through."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        path = str(scope.get("path", ""))
        counted = path not in UNCOUNTED_PATHS
        if counted and self.in_flight >= self.max_concurrent_requests:
            self._log_rejection(path)
            response = JSONResponse(
                {
                    "detail": f"The server is serving {self.max_concurrent_requests} requests, "
                    "the limit set by http.max_concurrent_requests; try again later"
                },
                status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
            await response(scope, receive, send)
            return

        size_limit = None if _is_stow(scope) else self.max_request_size
        if size_limit is not None:
            declared = _content_length(scope)
            if declared is not None and declared > size_limit:
                response = JSONResponse(
                    {"detail": _too_large_message(size_limit, declared)},
                    status_code=status.HTTP_413_CONTENT_TOO_LARGE,
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
                return

        if counted:
            self.in_flight += 1
        try:
            await self.app(scope, self._limited_receive(receive, size_limit), send)
        finally:
            if counted:
                self.in_flight -= 1

    def _limited_receive(self, receive: Receive, size_limit: int | None) -> Receive:
        received = 0
        body_complete = False

        async def limited() -> Message:
            nonlocal received, body_complete
            if body_complete:
                # Only http.disconnect comes now, which streaming responses wait for.
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout)
            except TimeoutError:
                LOGGER.warning(
                    "Request body stalled for %g s after %d bytes (http.read_timeout); "
                    "answering 408 and closing the connection",
                    self.read_timeout,
                    received,
                )
                raise HTTPException(
                    status.HTTP_408_REQUEST_TIMEOUT,
                    f"No part of the request body arrived for {self.read_timeout:g} s, "
                    "the limit set by http.read_timeout",
                    headers={"Connection": "close"},
                ) from None

            if message["type"] != "http.request" or not message.get("more_body", False):
                body_complete = True
            received += len(message.get("body", b""))
            if size_limit is not None and received > size_limit:
                raise HTTPException(
                    status.HTTP_413_CONTENT_TOO_LARGE,
                    _too_large_message(size_limit),
                    headers={"Connection": "close"},
                )
            return message

        return limited

    def _log_rejection(self, path: str) -> None:
        self._rejected_since_log += 1
        now = time.monotonic()
        if now - self._last_rejection_log < REJECTION_LOG_INTERVAL_SECONDS:
            return
        LOGGER.warning(
            "Answered 503 to %d requests (the latest for %s): %d requests are being served, "
            "the limit set by http.max_concurrent_requests",
            self._rejected_since_log,
            path,
            self.max_concurrent_requests,
        )
        self._rejected_since_log = 0
        self._last_rejection_log = now


def _is_stow(scope: Scope) -> bool:
    return scope.get("method") == "POST" and bool(STOW_PATH.match(str(scope.get("path", ""))))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


def _too_large_message(limit: int, declared: int | None = None) -> str:
    size = "The request body" if declared is None else f"The request body of {declared} bytes"
    return (
        f"{size} exceeds {limit} bytes, the limit set by http.max_request_size; "
        "send a smaller request"
    )
