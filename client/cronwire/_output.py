"""How the CLI prints: aligned tables and key/value details for people, JSON or YAML for scripts."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import IO, Any

from cronwire._types import ExecutionState, Trigger
from cronwire._values import format_duration

FORMATS = ("table", "wide", "json", "yaml")
# Tables show times as ages ("3m ago", "in 2h"); `-o wide` shows them exact, as json and yaml do.
_EXACT_TIMES: ContextVar[bool] = ContextVar("cronwire_exact_times", default=False)


@contextmanager
def exact_times(exact: bool = True) -> Iterator[None]:
    """Within the block, tables show exact times (`-o wide`) instead of ages."""
    token = _EXACT_TIMES.set(exact)
    try:
        yield
    finally:
        _EXACT_TIMES.reset(token)


def age(value: datetime, now: datetime | None = None) -> str:
    """How far `value` is from now, in its largest whole unit: `3m ago`, `in 2h`, `just now`."""
    seconds = ((now or datetime.now(UTC)) - value).total_seconds()
    span = abs(seconds)
    if span < 1:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if span >= size:
            text = f"{int(span // size)}{unit}"
            break
    return f"{text} ago" if seconds > 0 else f"in {text}"


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


def table_cell(value: Any) -> str:
    """A cell of a table: as `cell`, but a time is its age unless exact times are asked for."""
    if isinstance(value, datetime) and not _EXACT_TIMES.get():
        return age(value)
    return cell(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart, a header row in capitals."""
    text_rows = [[table_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = []
    for row in [list(headers), *text_rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"


def details(pairs: Iterable[tuple[str, Any]]) -> str:
    """`key: value` lines, keys aligned."""
    items = [(k, detail_cell(v)) for k, v in pairs]
    width = max((len(k) for k, _ in items), default=0)
    return "".join(f"{(k + ':').ljust(width + 1)} {v}\n" for k, v in items)


def showing_exact_times() -> bool:
    """True within `exact_times()` (`-o wide`)."""
    return _EXACT_TIMES.get()


def detail_cell(value: Any) -> str:
    """A value of a key/value block: a time exact, with its age unless exact times are asked for."""
    if isinstance(value, datetime) and not _EXACT_TIMES.get():
        return f"{cell(value)} ({age(value)})"
    return cell(value)


def trigger_text(trigger: Trigger | None) -> str:
    """A trigger for people, on one line: `cron 0 3 * * *`, `every 5m`, `at 2030-01-01T00:00:00Z`,
    `business day calendar=... day=-1`, `rrule DTSTART:...; RRULE:...`, `any of (...)`."""
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
        if kind == "rrule":  # its lines (DTSTART, RRULE, EXDATE, RDATE) on one line
            return f"rrule {'; '.join(line.strip() for line in str(body).splitlines() if line.strip())}"
        if isinstance(body, dict):  # business_day: {calendar: ..., day: -1, time_of_day: ...}
            return f"{kind.replace('_', ' ')} " + " ".join(f"{k}={v}" for k, v in body.items())
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
