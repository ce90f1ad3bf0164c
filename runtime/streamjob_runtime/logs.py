"""Structured logs: one JSON line per event that matters.

Every process (JobManager, TaskManager, local cluster) logs to stderr with
:func:`setup`, and emits events with :func:`event`, which keeps the event name
as a stable, greppable field (``"event": "checkpoint_completed"``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "component": self.component,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info and record.exc_info[1] is not None:
            line["error"] = repr(record.exc_info[1])
        return _encoder.encode(line).decode()


def setup(component: str, level: str | None = None) -> None:
    """Route the root logger to stderr as JSON lines tagged with ``component``.

    The level defaults to ``$STREAMJOB_LOG_LEVEL`` or INFO.
    """
    level = level or os.environ.get("STREAMJOB_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log is noise at INFO: one line per REST poll.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event with its structured fields."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})


def now_ms() -> int:
    return int(time.time() * 1000)
