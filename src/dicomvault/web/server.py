"""Run the HTTP API with uvicorn in a thread beside the DIMSE server."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Sequence

import uvicorn
from fastapi import FastAPI

LOGGER = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_SECONDS = 5


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
    """

    def __init__(
        self,
        app: FastAPI,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        trusted_proxies: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.port = port
        self.scheme = "https" if ssl_context is not None else "http"
        config = uvicorn.Config(
            app,
            log_config=None,  # the command line configures logging
            lifespan="off",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            # uvicorn trusts forwarded headers from 127.0.0.1 by default and
            # reads FORWARDED_ALLOW_IPS; only the setting decides here.
            proxy_headers=bool(trusted_proxies),
            forwarded_allow_ips=list(trusted_proxies),
            ssl_context_factory=None if ssl_context is None else _fixed_context(ssl_context),
        )
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

    def stop(self, timeout: float = GRACEFUL_SHUTDOWN_SECONDS + 2) -> None:
        """Stop serving; requests in flight get up to GRACEFUL_SHUTDOWN_SECONDS."""
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            LOGGER.warning("The HTTP server did not stop within %.0f s", timeout)
        else:
            LOGGER.info("HTTP API stopped")
        self._thread = None


def _fixed_context(
    context: ssl.SSLContext,
) -> Callable[[uvicorn.Config, Callable[[], ssl.SSLContext]], ssl.SSLContext]:
    """Return an ``ssl_context_factory`` for uvicorn that returns ``context``."""

    def factory(_config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return context

    return factory
