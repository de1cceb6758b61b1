"""Fuzzing of the HTTP API of `dicomvault serve` from its OpenAPI schema, with Schemathesis.

Schemathesis generates requests for every read-only operation (GET) and
for POST /api/login, valid and invalid ones, and sends them as a logged-in
admin. No response may be a server error (5xx). Operations that change
the archive or its settings are left out, so a run cannot delete what
another example needs or stop the DIMSE service. Set
DICOMVAULT_FUZZ_EXAMPLES for a longer run; see docs/fuzzing.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.schemas import BaseSchema

from tests.support.network import LOOPBACK
from tests.support.server import DicomvaultServer, ServerFactory

pytestmark = pytest.mark.integration

# Examples per operation. The schema has about 45 GET operations, so the
# default sends about 450 requests.
HTTP_FUZZ_EXAMPLES = max(5, int(os.environ.get("DICOMVAULT_FUZZ_EXAMPLES", "30")) // 3)
HTTP_TIMEOUT_SECONDS = 30
ADMIN_NAME = "fuzzadmin"
ADMIN_PASSWORD = "admin password for fuzzing"


@pytest.fixture(scope="module")
def index_backend() -> str:
    """SQLite only: request validation and error handling do not depend on the index."""
    return "sqlite"


@pytest.fixture(scope="module")
def server(start_module_server: ServerFactory) -> DicomvaultServer:
    started = start_module_server()
    started.add_user(ADMIN_NAME, ADMIN_PASSWORD)
    return started


@pytest.fixture(scope="module")
def admin_session(server: DicomvaultServer) -> Iterator[requests.Session]:
    """A requests session logged in as an admin, sending the CSRF token."""
    with requests.Session() as session:
        response = session.post(
            f"http://{LOOPBACK}:{server.http_port}/api/login",
            json={"name": ADMIN_NAME, "password": ADMIN_PASSWORD},
            timeout=HTTP_TIMEOUT_SECONDS,
        )
        assert response.status_code == 200, response.text
        session.headers["X-CSRF-Token"] = response.json()["csrf_token"]
        yield session


@pytest.fixture(scope="module")
def api_schema(server: DicomvaultServer) -> BaseSchema:
    """The server's OpenAPI schema, with its GET operations only."""
    schema = schemathesis.openapi.from_url(f"http://{LOOPBACK}:{server.http_port}/openapi.json")
    return schema.include(method="GET")


@pytest.fixture(scope="module")
def login_schema(server: DicomvaultServer) -> BaseSchema:
    """The server's OpenAPI schema, with POST /api/login only."""
    schema = schemathesis.openapi.from_url(f"http://{LOOPBACK}:{server.http_port}/openapi.json")
    return schema.include(method="POST", path="/api/login")


FUZZ_SETTINGS = settings(
    max_examples=HTTP_FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def fuzz_operations(
    schema: BaseSchema, server: DicomvaultServer, session: requests.Session
) -> list[str]:
    """Send generated requests for every operation of `schema`; return the operations fuzzed.

    NOTE: Schemathesis 4.32's pytest integration for schemas loaded in a
    fixture reads a pytest internal that pytest 9.2 removed, so the
    operations are run here in a loop, each under its own Hypothesis test.
    """
    base_url = f"http://{LOOPBACK}:{server.http_port}"
    fuzzed = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @FUZZ_SETTINGS
        @given(case=operation.as_strategy())
        def send_case(case: schemathesis.Case) -> None:
            response = case.call(base_url=base_url, session=session, timeout=HTTP_TIMEOUT_SECONDS)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} returned {response.status_code}: "
                f"{response.text[:500]}\nReproduce with: {case.as_curl_command()}"
            )
            assert server.returncode is None, server.describe()

        send_case()
        fuzzed.append(operation.label)
    return fuzzed


def test_read_operations_no_server_error(
    api_schema: BaseSchema, server: DicomvaultServer, admin_session: requests.Session
) -> None:
    fuzzed = fuzz_operations(api_schema, server, admin_session)
    assert "GET /dicomweb/studies" in fuzzed, fuzzed
    assert "GET /api/search" in fuzzed, fuzzed


def test_login_no_server_error(login_schema: BaseSchema, server: DicomvaultServer) -> None:
    with requests.Session() as session:
        fuzzed = fuzz_operations(login_schema, server, session)
    assert fuzzed == ["POST /api/login"]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/api/tasks/9223372036854775808", id="task-id"),
        pytest.param("/api/audit?offset=9223372036854775808", id="audit-offset"),
    ],
)
def test_integer_beyond_64_bits_422(
    path: str, server: DicomvaultServer, admin_session: requests.Session
) -> None:
    # Found by the fuzzing: the index raised on these values and the response was 500.
    url = f"http://{LOOPBACK}:{server.http_port}{path}"
    response = admin_session.get(url, timeout=HTTP_TIMEOUT_SECONDS)
    assert response.status_code == 422, response.text
