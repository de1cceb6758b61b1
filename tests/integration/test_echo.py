"""Verification SCP: echoscu against a running server."""

from __future__ import annotations

import pytest

from tests.support.dcmtk import echoscu
from tests.support.server import ServerFactory

pytestmark = pytest.mark.integration


def test_echoscu_succeeds(start_server: ServerFactory) -> None:
    server = start_server()

    run = echoscu(server.port, server.ae_title)

    assert run.returncode == 0, run.describe()
    assert "Received Echo Response (Success)" in run.output, run.describe()
