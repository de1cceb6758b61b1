"""Loopback ports and the process environment shared by the servers and clients."""

from __future__ import annotations

import os
import socket

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port


def accepts_connections(port: int) -> bool:
    """Return True if a TCP connection to 127.0.0.1:`port` succeeds right now."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def process_environment(nodelay: bool) -> dict[str, str]:
    """Return this process's environment with TCP_NODELAY=1 set, or removed.

    DCMTK 3.6.7, as Debian builds it, disables Nagle's algorithm on its
    sockets only when TCP_NODELAY is set in the environment. DICOMVAULT_*
    variables are removed so that every dicomvault runs on its defaults.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMVAULT_")}
    env.pop("TCP_NODELAY", None)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env
