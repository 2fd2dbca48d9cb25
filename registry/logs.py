"""Log lines for machines and for people, shared by the gateway and the workers.

``LORAQ_LOG_FORMAT=json`` writes one JSON object per line (``ts``, ``level``,
``logger``, ``msg`` and, when the record carries them, ``job_id``,
``adapter``, ``version``, ``worker``, ``tenant``, ``batch_id``; ``exc`` for a
traceback); ``text`` writes the usual human line. The default is ``text`` on
a terminal and ``json`` otherwise, so a container's logs are structured and a
developer's terminal is readable. Pass the fields with ``extra=``.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

FIELDS = ("job_id", "adapter", "version", "worker", "tenant", "batch_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """The human line, with the job's fields appended when it has them."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{n}={record.__dict__[n]}" for n in FIELDS if record.__dict__.get(n) is not None)
        text = super().format(record)
        return f"{text} [{fields}]" if fields else text


def chosen_format(value: str | None = None) -> str:
    value = (value or os.environ.get("LORAQ_LOG_FORMAT") or "").lower()
    if value in ("json", "text"):
        return value
    return "text" if sys.stderr.isatty() else "json"


def configure(*, level: int = logging.INFO, fmt: str | None = None) -> None:
    """One stderr handler on the root logger in the chosen format; uvicorn's loggers go through it too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if chosen_format(fmt) == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
