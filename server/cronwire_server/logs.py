"""Logging: set up in one place, as readable text or as one JSON object per line.

A log line about one run carries the run's names as record attributes
(`log.info(..., extra=run_fields(execution))`): JSON lines have them as fields,
text lines end with them, compactly. Nothing here ever logs secrets: callers pass
names, states and numbers, never environments, headers or bodies.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from cronwire_server.core.model import Execution

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
# Fields holding resource names, shown in text by their last part (the namespace is shown too).
_RESOURCE_FIELDS = frozenset({"job", "schedule", "execution"})
# What makes a text value quoted: whitespace (`\s` is `str.isspace`), a quote or an equals sign.
_NEEDS_QUOTES = re.compile(r'[\s"=]')


def run_fields(execution: Execution) -> dict[str, Any]:
    """The `extra=` of a log line about `execution`: its namespace and the names of its job,
    schedule (when a schedule fired it) and itself."""
    fields: dict[str, Any] = {"namespace": execution.namespace, "job": execution.job_name}
    if execution.schedule_id:
        fields["schedule"] = execution.schedule_name
    fields["execution"] = execution.name
    return fields


def url_for_log(url: str) -> str:
    """`url` without credentials, query or fragment, which may hold tokens."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    attributes = vars(record)
    if attributes.keys() <= _STANDARD:  # most lines carry no fields: a set comparison in C
        return {}
    return {k: v for k, v in attributes.items() if k not in _STANDARD and not k.startswith("_")}


class _SecondsCache:
    """The part of a time stamp above the millisecond, made once per second of log lines: every
    line would otherwise format the same date and time again."""

    def __init__(self, render: Callable[[int], str]) -> None:
        self._render = render
        self._second = -1
        self._text = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._text = second, self._render(second)
        return self._text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, message, the record's
    extra fields, and the exception (traceback as one string) if any."""

    def __init__(self) -> None:
        super().__init__()
        self._seconds = _SecondsCache(
            lambda second: datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        )

    def _time(self, created: float) -> str:
        """RFC 3339 in UTC, to the millisecond of the microsecond `created` rounds to."""
        second = int(created)
        micro = round((created - second) * 1_000_000)
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        return f"{self._seconds(second)}.{micro // 1000:03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic line, then the record's extra fields as key=value."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._seconds = _SecondsCache(
            lambda second: time.strftime(self.default_time_format, self.converter(second))
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return f"{self._seconds(record.created)},{int(record.msecs):03d}"  # as logging's default

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = extra_fields(record)
        if not fields:
            return line
        return line + " " + " ".join(f"{key}={_compact(key, value)}" for key, value in fields.items())


def _compact(key: str, value: Any) -> str:
    text = str(value)
    if key in _RESOURCE_FIELDS and text.startswith("namespaces/"):
        text = text.rsplit("/", 1)[-1]
    return json.dumps(text) if not text or _NEEDS_QUOTES.search(text) else text


def configure(level: str | int = logging.INFO, log_format: str = "text") -> None:
    """Send every logger's records to stderr in `log_format` ("text" or "json")."""
    if log_format not in FORMATS:
        raise ValueError(f"log format is one of {', '.join(FORMATS)}, not {log_format!r}")
    # What a record would otherwise look up for every line, and no format here shows: the
    # caller's file and line (a walk of the stack), the thread's and the process's names.
    logging._srcfile = None  # the logging HOWTO's "Optimization"
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Libraries that log SQL parameters or result rows at DEBUG (job parameters, arguments,
    # key digests, server secrets): at most their statements reach the log, whatever the level,
    # and those (INFO, one or two records per statement) only at DEBUG.
    root = logging.getLogger().getEffectiveLevel()
    for name in QUIET_AT_DEBUG:
        logging.getLogger(name).setLevel(
            logging.INFO if root <= logging.DEBUG else max(root, logging.WARNING)
        )


QUIET_AT_DEBUG = ("aiosqlite", "sqlalchemy.engine", "psycopg")
