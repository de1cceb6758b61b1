"""Container health check: request /health from the server these settings describe.

``python -m dicomvault.healthcheck`` is the HEALTHCHECK command of the
container image. It reads the settings the way ``dicomvault serve`` does
(DICOMVAULT_* environment variables and the file named by
DICOMVAULT_CONFIG), connects to the HTTP port on the server's own address,
and exits with 0 when GET /health returns status 200, and with 1 otherwise. It needs
only the standard library, because the slim base image has no curl.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import ssl
import sys
from collections.abc import Sequence

from dicomvault.config import ConfigError, Settings, load_settings

HEALTH_PATH = "/health"
# Below the image's HEALTHCHECK --timeout of 5 s, so that the probe reports
# its own message before Docker stops it.
DEFAULT_TIMEOUT_SECONDS = 3.0


def probe_host(listen_host: str) -> str:
    """Return the address to connect to for a server listening on ``listen_host``.

    A server on the unspecified address (0.0.0.0 or ::) is reached on the
    loopback address of the same family; any other address as it is.
    """
    if listen_host == "localhost":
        return listen_host
    address = ipaddress.ip_address(listen_host)
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return listen_host


def check_health(settings: Settings, timeout: float) -> tuple[bool, str]:
    """Send GET /health to the server of ``settings``.

    Returns
    -------
    tuple of (bool, str)
        Whether the server returned status 200, and a one-line description of the
        result for the health check's output.
    """
    if settings.http.port == 0:
        return False, (
            "HTTP is off (http.port = 0), so there is no /health to request; turn HTTP on, "
            "or run the container without a health check (docker run --no-healthcheck)"
        )

    host = probe_host(settings.http.host)
    connection: http.client.HTTPConnection
    if settings.http.tls_cert_file:
        # The probe only reads a status from the server in its own network
        # namespace and sends no credentials. The certificate usually names the public
        # host name, not the loopback address, so it is not verified here.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection(
            host, settings.http.port, timeout=timeout, context=context
        )
        scheme = "https"
    else:
        connection = http.client.HTTPConnection(host, settings.http.port, timeout=timeout)
        scheme = "http"
    shown_host = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{shown_host}:{settings.http.port}{HEALTH_PATH}"

    try:
        connection.request("GET", HEALTH_PATH)
        response = connection.getresponse()
        response.read()
    except (OSError, http.client.HTTPException) as exc:
        return False, f"GET {url} failed: {str(exc) or type(exc).__name__}"
    finally:
        connection.close()

    if response.status != 200:
        return False, f"GET {url} returned {response.status} {response.reason}"
    return True, f"GET {url} returned 200"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the health check and return the exit code: 0 healthy, 1 not."""
    parser = argparse.ArgumentParser(
        prog="python -m dicomvault.healthcheck",
        description="Request /health from the dicomvault server that the DICOMVAULT_* "
        "environment variables and DICOMVAULT_CONFIG describe; exit 0 if it returns status 200.",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        help="seconds to wait for the connection and the answer "
        f"(default {DEFAULT_TIMEOUT_SECONDS})",
    )
    options = parser.parse_args(argv)

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"Health check failed: {exc}", file=sys.stderr)
        return 1

    healthy, description = check_health(settings, options.timeout)
    if not healthy:
        print(f"Health check failed: {description}", file=sys.stderr)
        return 1
    print(description)
    return 0


if __name__ == "__main__":
    sys.exit(main())
