"""The in-memory handler of recent log records: bounds, levels, order."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from dicomvault.recent_logs import RecentLogHandler, install_recent_log_handler


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    test_logger = logging.getLogger("dicomvault.tests.recent_logs")
    test_logger.setLevel(logging.DEBUG)
    test_logger.propagate = False
    yield test_logger
    test_logger.handlers.clear()
    test_logger.propagate = True


def test_keeps_newest_only(logger: logging.Logger) -> None:
    handler = RecentLogHandler(3)
    logger.addHandler(handler)

    for number in range(5):
        logger.info("event %d", number)

    assert [event.message for event in handler.events()] == ["event 4", "event 3", "event 2"]


def test_level_filter(logger: logging.Logger) -> None:
    handler = RecentLogHandler(10)
    logger.addHandler(handler)

    logger.debug("not kept")
    logger.info("kept at INFO")
    logger.warning("a warning")
    logger.error("an error")

    assert [event.message for event in handler.events()] == [
        "an error",
        "a warning",
        "kept at INFO",
    ]
    assert [event.level for event in handler.events(logging.WARNING)] == ["ERROR", "WARNING"]
    assert len(handler.events(limit=1)) == 1


def test_exception_summary(logger: logging.Logger) -> None:
    handler = RecentLogHandler(10)
    logger.addHandler(handler)

    try:
        raise OSError("disk full")
    except OSError:
        logger.exception("Storing 1.2.3 failed")

    event = handler.events()[0]
    assert event.message == "Storing 1.2.3 failed: OSError: disk full"
    assert event.logger == "dicomvault.tests.recent_logs"


def test_capacity_zero_installs_nothing() -> None:
    before = list(logging.getLogger().handlers)

    assert install_recent_log_handler(0) is None
    assert logging.getLogger().handlers == before
