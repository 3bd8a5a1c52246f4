"""Log lines' time stamps: each line's own second and millisecond, in text and in JSON, though
the formatters render a second's date and time once for all its lines."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from cronwire_server.logs import JsonFormatter, TextFormatter


def _record(created: float) -> logging.LogRecord:
    record = logging.LogRecord("cronwire_server.workers", logging.INFO, "", 0, "ran %s", ("e-1",), None)
    record.created, record.msecs = created, int((created - int(created)) * 1000)  # as logging does
    return record


# Seconds apart, and lines of one second with different milliseconds.
CREATED = [
    1_796_000_000.25,
    1_796_000_000.999,
    1_796_000_001.0,
    1_796_003_600.5,
    1_796_000_000.007,
    1_796_000_000.9999996,
]


def test_text_lines_carry_their_own_local_time() -> None:
    formatter, stock = TextFormatter(), logging.Formatter()
    for created in CREATED:
        expected = stock.formatTime(_record(created))
        assert formatter.format(_record(created)).startswith(
            f"{expected} INFO cronwire_server.workers: ran e-1"
        )


def test_json_lines_carry_their_own_utc_time() -> None:
    formatter = JsonFormatter()
    for created in CREATED:
        shown = json.loads(formatter.format(_record(created)))["time"]
        expected = (
            datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        )
        assert shown == expected
