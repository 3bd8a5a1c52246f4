"""How the CLI prints: aligned tables and key/value details for people, JSON or YAML for scripts."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import IO, Any

from cronwire._types import ExecutionState, Trigger
from cronwire._values import format_duration

FORMATS = ("table", "json", "yaml")
YAML_MISSING = "YAML needs PyYAML, which is not installed (pip install pyyaml); JSON works without it"


class OutputError(Exception):
    """The output cannot be produced as asked (e.g. YAML without PyYAML)."""


def yaml_module() -> ModuleType:
    """PyYAML, imported on first use: only YAML input and output need it."""
    try:
        return importlib.import_module("yaml")
    except ImportError:
        raise OutputError(YAML_MISSING) from None


def dump(document: Any, fmt: str) -> str:
    """`document` as JSON (indented) or YAML."""
    if fmt == "yaml":
        text: str = yaml_module().safe_dump(document, sort_keys=False, allow_unicode=True)
        return text
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def json_line(document: Any) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n"


def cell(value: Any) -> str:
    """A value as a table cell: times to the second in UTC, durations short, empty as `-`."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        if 0 < seconds < 10 and seconds != int(seconds):
            return f"{seconds:.2f}s"
        return format_duration(timedelta(seconds=round(seconds)))
    if isinstance(value, ExecutionState):
        return value.name
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart, a header row in capitals."""
    text_rows = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = []
    for row in [list(headers), *text_rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"


def details(pairs: Iterable[tuple[str, Any]]) -> str:
    """`key: value` lines, keys aligned."""
    items = [(k, cell(v)) for k, v in pairs]
    width = max((len(k) for k, _ in items), default=0)
    return "".join(f"{(k + ':').ljust(width + 1)} {v}\n" for k, v in items)


def trigger_text(trigger: Trigger | None) -> str:
    """A trigger for people: `cron 0 3 * * *`, `every 5m`, `at 2030-01-01T00:00:00Z`, `any of (...)`."""
    from cronwire._documents import trigger_document

    if trigger is None:
        return "-"

    def text(document: dict[str, Any]) -> str:
        ((kind, body),) = document.items()
        if kind in ("any_of", "all_of"):
            inner = "; ".join(text(child) for child in body)
            return f"{kind.replace('_', ' ')} ({inner})"
        if kind == "cron" and isinstance(body, dict):  # a DST policy other than the default
            return f"cron {body['expression']} (dst {body['dst_policy'].lower()})"
        return f"{kind} {body}"

    return text(trigger_document(trigger))


def short(name: str, namespace: str) -> str:
    """The id of a resource of `namespace`; the full name of one elsewhere."""
    prefix = f"namespaces/{namespace}/"
    if name.startswith(prefix):
        return name.split("/")[-1]
    return name


Writer = Callable[[str], Any]


def write(stream: IO[str], text: str) -> None:
    stream.write(text)
    stream.flush()
