"""Logging to stderr, one line per event: plain text for journald, or JSON lines for machines."""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime

import orjson

# AWS SDK loggers at DEBUG print request and response bodies, which hold credentials: never below
# WARNING, whatever the root level is.
_QUIET = ("botocore", "aiobotocore", "aioboto3", "boto3", "urllib3", "asyncio")


def _json_entry(created: float, level: str, logger: str, message: str) -> dict[str, str]:
    return {
        "time": datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "level": level,
        "logger": logger,
        "message": " ".join(message.split()),
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = _json_entry(record.created, record.levelname.lower(), record.name, record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = type(record.exc_info[1]).__name__
        return orjson.dumps(entry).decode()


def error_line(message: str, log_format: str = "text") -> str:
    """The CLI's final one-line error, in the log format, so `--log-format json` output stays
    JSON to the last line."""
    if log_format == "json":
        return orjson.dumps(_json_entry(time.time(), "error", "sentinel", message)).decode()
    return f"sentinel: {message}"


class TextFormatter(logging.Formatter):
    """`level logger: message` — journald adds the time; newlines are folded to keep one line."""

    def format(self, record: logging.LogRecord) -> str:
        message = " ".join(record.getMessage().split())
        if record.exc_info and record.exc_info[1] is not None:
            message += f" ({type(record.exc_info[1]).__name__})"
        return f"{record.levelname.lower()} {record.name}: {message}"


def configure(log_format: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
