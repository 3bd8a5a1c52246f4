"""Text forms of durations, times and enum members, shared by the CLI and `apply` files."""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

E = TypeVar("E", bound=enum.Enum)

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)")
DURATION_HELP = "a duration: 90s, 10m, 1h30m, 500ms, 2d, or seconds (600)"
TIME_HELP = (
    "a time: 2030-01-01T00:00:00Z, 2030-01-01 09:30 or 2030-01-01 (no offset: UTC), now, "
    "or relative to now (-6h, +30m, -1d)"
)
LOCAL_TIME_HELP = (
    "a time: 2030-01-01T09:00 (no offset: in --tz, else UTC), 2030-01-01T09:00:00Z, now, "
    "or relative to now (-6h, +30m)"
)
_RELATIVE = re.compile(r"^[+-](\d|\.\d)")


def parse_duration(text: str) -> timedelta:
    """`90s`, `10m`, `1h30m`, `1.5s`, `500ms`, `2d`, or a number of seconds (`600`, `600s`)."""
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if seconds < 0 or seconds != seconds:
            raise ValueError(f"invalid duration {text!r}: must not be negative")
        return timedelta(seconds=seconds)
    position, total = 0, 0.0
    for match in _PART.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not value or position != len(value):
        raise ValueError(f"invalid duration {text!r}; {DURATION_HELP}")
    return timedelta(seconds=total)


def format_duration(value: timedelta) -> str:
    """The shortest form `parse_duration` reads back: `10m`, `1h30m`, `1.5s`, `0s`."""
    total = value.total_seconds()
    if total < 0:
        return "-" + format_duration(-value)
    whole = int(total)
    fraction = round(total - whole, 6)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    if fraction:
        parts.append(f"{seconds + fraction:g}s")
    elif seconds or not parts:
        parts.append(f"{seconds}s")
    return "".join(parts)


def looks_relative(text: str) -> bool:
    """True for `-6h`, `+30m`, `-1.5d`: a time relative to now (not a command-line option)."""
    return bool(_RELATIVE.match(text))


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time or date (no offset means UTC), `now`, or `-2h` / `+30m` relative to now."""
    parsed = parse_local_time(text, now)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def parse_local_time(text: str, now: datetime | None = None) -> datetime:
    """As `parse_time`, but a time written without an offset stays naive (a wall time, for
    `in_zone` to read in a time zone); `now` and relative times are aware."""
    value = text.strip()
    current = now or datetime.now(UTC)
    if value.lower() == "now":
        return current
    if value[:1] in ("+", "-") and value[1:2] and not value[1:2].isspace():
        try:
            delta = parse_duration(value[1:])
        except ValueError:
            pass
        else:
            return current + delta if value[0] == "+" else current - delta
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"invalid time {text!r}; {TIME_HELP}") from None
    return parsed


def in_zone(value: datetime, zone: str = "") -> datetime:
    """`value` as an aware time: a naive (wall) time is read in IANA `zone` (UTC if empty)."""
    if value.tzinfo is not None:
        return value
    if not zone or zone.upper() == "UTC":
        return value.replace(tzinfo=UTC)
    try:
        return value.replace(tzinfo=ZoneInfo(zone))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {zone!r}; an IANA name such as Europe/Berlin") from None


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with a `Z`; microseconds only when there are some."""
    utc = value.astimezone(UTC)
    text = utc.isoformat(timespec="microseconds" if utc.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def parse_enum(cls: type[E], text: str) -> E:
    """A member by name, case-insensitive, `-` for `_` (`run-once`, `RUN_ONCE`)."""
    key = text.strip().upper().replace("-", "_")
    try:
        return cls[key]
    except KeyError:
        choices = ", ".join(enum_text(m) for m in cls)
        raise ValueError(f"invalid value {text!r}; one of {choices}") from None


def enum_text(member: enum.Enum) -> str:
    """The CLI spelling of a member: lowercase with hyphens (`run-once`)."""
    return member.name.lower().replace("_", "-")
