"""Run the HTTP API with uvicorn in a thread beside the DIMSE server."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

LOGGER = logging.getLogger(__name__)

# Paths that load balancers and monitoring request every few seconds. Their
# successful requests are left out of the access log.
PROBE_PATHS = frozenset({"/health", "/ready"})
GRACEFUL_SHUTDOWN_SECONDS = 5
STOP_POLL_SECONDS = 0.1
# Time given to uvicorn to cancel the requests left after its graceful shutdown timeout.
CANCEL_SECONDS = 2.0
# The default of http.keep_alive_timeout, and of uvicorn 0.55.
KEEP_ALIVE_SECONDS = 5
# The default of http.read_timeout.
READ_TIMEOUT_SECONDS = 60.0


class HttpServer:
    """Serves an ASGI application on one address, over HTTP or HTTPS, until :meth:`stop`.

    Parameters
    ----------
    app : FastAPI
        The application.
    host, port : str, int
        The address to listen on.
    ssl_context : ssl.SSLContext, optional
        Serve HTTPS with this context (see :func:`dicomvault.tls.server_context`);
        plain HTTP when None.
    trusted_proxies : Sequence of str
        IP addresses or networks whose X-Forwarded-For and X-Forwarded-Proto
        headers replace the client address and scheme. Empty: the headers
        are ignored from every client.
    shutdown_timeout : float
        Seconds that requests in flight get to finish at a stop.
    keep_alive_timeout : int
        Seconds an idle keep-alive connection is kept open (``http.keep_alive_timeout``).
    read_timeout : float
        Seconds a client may take to send a request line and headers
        (``http.read_timeout``); a connection that has not sent them by then
        is closed. The body's parts are timed by
        :class:`dicomvault.web.limits.RequestLimitsMiddleware`.
    """

    def __init__(
        self,
        app: FastAPI,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        trusted_proxies: Sequence[str] = (),
        shutdown_timeout: float = GRACEFUL_SHUTDOWN_SECONDS,
        keep_alive_timeout: int = KEEP_ALIVE_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
    ) -> None:
        self.host = host
        self.port = port
        self.scheme = "https" if ssl_context is not None else "http"
        config = uvicorn.Config(
            app,
            log_config=None,  # the command line configures logging
            lifespan="off",
            # uvicorn's setting is an int of seconds; a fraction is rounded up.
            timeout_graceful_shutdown=math.ceil(shutdown_timeout),
            timeout_keep_alive=keep_alive_timeout,
            http=request_head_timeout_protocol(read_timeout),
            # uvicorn trusts forwarded headers from 127.0.0.1 by default and
            # reads FORWARDED_ALLOW_IPS; only the setting decides here.
            proxy_headers=bool(trusted_proxies),
            forwarded_allow_ips=list(trusted_proxies),
            ssl_context_factory=None if ssl_context is None else _fixed_context(ssl_context),
        )
        self.shutdown_timeout = shutdown_timeout
        access_log = logging.getLogger("uvicorn.access")
        if not any(isinstance(f, SuccessfulProbeFilter) for f in access_log.filters):
            access_log.addFilter(SuccessfulProbeFilter())
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind the address and start serving; returns once the port is open.

        Raises
        ------
        OSError
            If the address cannot be bound.
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # uvicorn writes a response's headers and body in separate sends.
            # With Nagle's algorithm on, the body waits for the client's delayed
            # acknowledgement of the headers (about 40 ms on Linux) on every
            # keep-alive request. Accepted sockets inherit the option on Linux.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="http", daemon=True
        )
        self._thread.start()
        LOGGER.info(
            "HTTP API listening on %s://%s:%d (docs at /docs)", self.scheme, self.host, self.port
        )

    def stop_accepting(self) -> None:
        """Close the listening socket and idle connections, and let requests in flight go on.

        uvicorn closes the socket within 0.1 s, on its own thread. :meth:`stop`
        then waits for the requests in flight, up to ``shutdown_timeout`` seconds.
        """
        self._server.should_exit = True

    def stop(self, timeout: float | None = None, abort: threading.Event | None = None) -> None:
        """Stop serving: stop accepting, then wait for the requests in flight.

        Parameters
        ----------
        timeout : float, optional
            Seconds the requests in flight get; ``shutdown_timeout`` when
            None. uvicorn cancels those still running after
            ``shutdown_timeout`` seconds, so a larger value waits no longer.
            The wait for the server thread adds ``CANCEL_SECONDS`` for the
            cancellation.
        abort : threading.Event, optional
            When set during the wait, the requests in flight are cancelled at once.
        """
        if self._thread is None:
            return
        self.stop_accepting()
        wait = (self.shutdown_timeout if timeout is None else timeout) + CANCEL_SECONDS
        deadline = time.monotonic() + wait
        abort = abort or threading.Event()
        while self._thread.is_alive() and time.monotonic() < deadline:
            if abort.is_set():
                # uvicorn stops waiting for connections and cancels their tasks.
                self._server.force_exit = True
            self._thread.join(min(STOP_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        if self._thread.is_alive():
            LOGGER.warning("The HTTP server did not stop within %.0f s", wait)
        else:
            LOGGER.info("HTTP API stopped")
        self._thread = None


class SuccessfulProbeFilter(logging.Filter):
    """Drops the access log lines of GET and HEAD /health and /ready with status 200.

    Other responses to these paths, such as 503 from /ready, are kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Return False for a successful probe request."""
        # uvicorn 0.55 logs (client, method, path with query, HTTP version, status).
        args = record.args
        if not isinstance(args, tuple) or len(args) != 5:
            return True
        _, method, path, _, status = args
        return not (method in ("GET", "HEAD") and path in PROBE_PATHS and status == 200)


class _TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head does not arrive in time.

    uvicorn 0.55 times only the idle time between requests
    (``timeout_keep_alive``), and that timer stops at the first byte. A
    client that connects and sends nothing, or part of a request head,
    would hold its connection for good. Here a timer runs from the
    connection's start, and from the end of each response, until a
    request's line and headers are complete.
    """

    head_timeout: float = READ_TIMEOUT_SECONDS

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's head is complete
            self._stop_head_timer()

    def on_response_complete(self) -> None:
        # Started first: uvicorn handles a pipelined request inside, which stops it again.
        self._start_head_timer()
        super().on_response_complete()

    def _start_head_timer(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._on_head_timeout)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        LOGGER.debug(
            "Closed the connection from %s: no request head within %g s (http.read_timeout)",
            _format_address(self.client),
            self.head_timeout,
        )
        self.transport.close()


def request_head_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    """Return uvicorn's h11 protocol with a ``seconds`` timeout for each request head."""
    return type("TimedH11Protocol", (_TimedH11Protocol,), {"head_timeout": seconds})


def _format_address(address: tuple[str, int] | None) -> str:
    return "unknown" if address is None else f"{address[0]}:{address[1]}"


def _fixed_context(
    context: ssl.SSLContext,
) -> Callable[[uvicorn.Config, Callable[[], ssl.SSLContext]], ssl.SSLContext]:
    """Return an ``ssl_context_factory`` for uvicorn that returns ``context``."""

    def factory(_config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return context

    return factory
