"""Log records: one line each on stderr (journald priorities, or JSON), the request id on every
line, and an optional copy of the records published to MQTT for live following."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

# The request being answered; set by the pipeline, read by every record logged meanwhile.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
# sd-daemon(3) priorities, which journald reads from the start of each stderr line.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def priority(levelno: int) -> int:
    """The syslog priority of a logging level."""
    if levelno >= logging.CRITICAL:
        return 2
    for level in (logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JournalFormatter(logging.Formatter):
    """``<6>edge_runtime.mqtt: [req 1a2b] message``: no timestamp, journald adds its own."""

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", "")
        text = f"<{priority(record.levelno)}>{record.name}: "
        text += f"[req {rid}] " if rid else ""
        text += record.getMessage()
        if record.exc_info:
            # One record, one line: the traceback's lines are joined, not split across entries.
            text += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(as_dict(record, self), ensure_ascii=False)


def as_dict(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, Any]:
    """A record as the JSON formats (stderr and MQTT) write it."""
    out: dict[str, Any] = {
        "time": round(record.created, 3),
        "level": record.levelname.lower(),
        "logger": record.name,
        "message": record.getMessage(),
    }
    rid = getattr(record, "request_id", "")
    if rid:
        out["request_id"] = rid
    if record.exc_info:
        out["exception"] = formatter.formatException(record.exc_info)
    return out


def configure(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every record to stderr, one line each, in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else JournalFormatter())
    handler.addFilter(_RequestId())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level, logging.INFO))


class Forwarder(logging.Handler):
    """Keeps recent records for publishing elsewhere (MQTT); never blocks, drops when full.

    ``wake`` is called (from any thread) when a record arrives, so the publisher need not poll.
    """

    def __init__(self, level: int, capacity: int = 1000, wake: Callable[[], None] | None = None):
        super().__init__(level)
        self.addFilter(_RequestId())
        self.setFormatter(logging.Formatter())
        self.records: deque[dict[str, Any]] = deque(maxlen=capacity)
        self.dropped = 0
        self._wake = wake

    def emit(self, record: logging.LogRecord) -> None:
        """Queue one record."""
        # The MQTT client's own records would loop back through the publisher.
        if record.name.startswith(("edge_runtime.mqtt", "paho")):
            return
        if len(self.records) == self.records.maxlen:
            self.dropped += 1
        self.records.append(as_dict(record, self.formatter or logging.Formatter()))
        if self._wake is not None:
            self._wake()

    def drain(self) -> list[dict[str, Any]]:
        """Take every queued record."""
        out = list(self.records)
        self.records.clear()
        return out
