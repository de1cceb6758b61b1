"""Configure log output for the command line: text or JSON lines on stderr."""

from __future__ import annotations

import datetime
import json
import logging
import sys

from pynetdicom import _config as pynetdicom_config

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class UtcFormatter(logging.Formatter):
    """Formats times as ISO 8601 in UTC, such as 2026-12-04T20:11:37.258Z."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """Return the record's creation time in UTC with milliseconds."""
        moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """Formats each record as one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON line with time, level, logger and message."""
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str) -> None:
    """Send log records at ``level`` and above to stderr in ``log_format``.

    pynetdicom's own loggers stay at WARNING unless ``level`` is DEBUG,
    because at INFO they print every PDU exchange. Below DEBUG, pynetdicom's
    standard event handlers are not bound to new associations either: they
    format every PDU and DIMSE message whatever the level, and log a
    traceback for a malformed command set that the server aborts anyway.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(UtcFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel("DEBUG" if level == "DEBUG" else "WARNING")
    pynetdicom_config.LOG_HANDLER_LEVEL = "standard" if level == "DEBUG" else "none"
    logging.getLogger("alembic").setLevel("WARNING")
    # pydicom reports non-conformant values it reads as warnings; log them.
    logging.captureWarnings(True)
