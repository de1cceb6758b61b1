"""`dicomvault node add` and `node allow`: invalid access options, rejected before any change.

These runs stop at validation, before the command opens an index database
or configures logging, so they run in-process.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from dicomvault.cli import app

NODE = ["node", "add", "CT01", "--host", "10.0.0.5", "--port", "104"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            ["--allow", "store,echo"],
            "--allow must contain only store, query, retrieve, got 'echo'; "
            "C-ECHO is always allowed",
            id="echo-permission",
        ),
        pytest.param(
            ["--allow", ""],
            "--allow must be 'all', 'none' or permissions separated by commas "
            "(store, query, retrieve), got ''",
            id="empty-permissions",
        ),
        pytest.param(
            ["--source-address", "10.0.0.5", "--source-address", "ct01.example.org"],
            "--source-address must contain IP addresses or networks such as 10.0.0.5 "
            "or 10.0.0.0/24, got 'ct01.example.org'",
            id="host-name",
        ),
        pytest.param(
            ["--tls-client-subject", "ct01"],
            "--tls-client-subject must be a distinguished name in RFC 4514 form such as "
            "'CN=ct01.example.org,O=Hospital', got 'ct01'",
            id="subject",
        ),
    ],
)
def test_add_rejects_invalid_access(options: list[str], message: str) -> None:
    result = CliRunner().invoke(app, [*NODE, *options])

    assert result.exit_code == 2
    assert result.output == f"Error: Invalid node 'CT01': {message}\n"


def test_allow_rejects_unknown_permission() -> None:
    result = CliRunner().invoke(app, ["node", "allow", "CT01", "store,delete"])

    assert result.exit_code == 2
    assert result.output == (
        "Error: Invalid permissions 'store,delete': must contain only store, query, "
        "retrieve, got 'delete'\n"
    )
