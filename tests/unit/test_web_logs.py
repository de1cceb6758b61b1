"""The recent log events API: levels, limit and a server that keeps none."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

from dicomvault.archive import Archive
from dicomvault.ingest.manager import TaskManager
from dicomvault.recent_logs import RecentLogHandler
from dicomvault.web.app import create_app
from dicomvault.web.server import HttpServer
from tests.support.network import LOOPBACK, free_port
from tests.unit.conftest import WEB_TIMEOUT_SECONDS

LOGGER_NAME = "dicomvault.tests.web_logs"


@pytest.fixture(scope="module")
def index_backend() -> str:
    """Run on SQLite only, because these tests exercise HTTP routes and pages.

    The index queries behind them run on both back-ends in test_index,
    test_users and test_web_search.
    """
    return "sqlite"


@pytest.fixture
def handler() -> Iterator[RecentLogHandler]:
    recent = RecentLogHandler(100)
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(recent)
    logger.setLevel(logging.INFO)
    yield recent
    logger.removeHandler(recent)


@pytest.fixture
def logs_client(
    manager: TaskManager, admin_token: str, handler: RecentLogHandler
) -> Iterator[httpx.Client]:
    """A client of an application that serves ``handler`` at /api/logs."""
    context = manager.context
    archive = Archive(context.settings, context.engine, context.storage)
    server = HttpServer(create_app(manager, archive, recent_logs=handler), LOOPBACK, free_port())
    server.start()
    with httpx.Client(
        base_url=f"http://{LOOPBACK}:{server.port}",
        timeout=WEB_TIMEOUT_SECONDS,
        headers={"Authorization": f"Bearer {admin_token}"},
    ) as client:
        yield client
    server.stop()


def test_newest_first(logs_client: httpx.Client) -> None:
    logger = logging.getLogger(LOGGER_NAME)
    logger.info("Association accepted from CT01")
    logger.warning("Association aborted with CT01")

    response = logs_client.get("/api/logs")

    assert response.status_code == 200
    messages = [entry["message"] for entry in response.json()]
    assert messages == ["Association aborted with CT01", "Association accepted from CT01"]
    assert response.json()[0]["level"] == "WARNING"
    assert response.json()[0]["logger"] == LOGGER_NAME


def test_level_and_limit(logs_client: httpx.Client) -> None:
    logger = logging.getLogger(LOGGER_NAME)
    for number in range(3):
        logger.error("failure %d", number)
    logger.info("routine")

    errors = logs_client.get("/api/logs", params={"level": "ERROR", "limit": 2})

    assert [entry["message"] for entry in errors.json()] == ["failure 2", "failure 1"]


def test_unknown_level(logs_client: httpx.Client) -> None:
    response = logs_client.get("/api/logs", params={"level": "LOUD"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "level"]


def test_server_without_buffer(client: httpx.Client) -> None:
    response = client.get("/api/logs")

    assert response.status_code == 503
    assert response.json()["detail"] == (
        "This server keeps no recent log records; set logging.recent_events above 0"
    )
