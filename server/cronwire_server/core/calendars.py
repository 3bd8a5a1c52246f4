"""Calendar arithmetic: which instants a calendar holds, and which ticks a schedule's calendars
exclude.

Pure functions over the domain model, no I/O: the callers pass the calendars in (a schedule
carries the ones it names, `Schedule.calendars`, kept with it by the store).

A day is on a calendar when one of its day rules names it (dates, yearly dates, weekdays,
public holidays); with time ranges only those wall-clock times of such a day are, otherwise
the whole local day, whatever its length (23 or 25 hours across a daylight-saving change).
A calendar with time ranges and no day rule holds those times on every day. The times of
the included calendars are added, then those of the excluded ones taken away; each calendar
is read in its own time zone.

Public holidays come from the `holidays` package, computed per (country, subdivision, year)
when first asked for and remembered, so a year never computed before needs no restart.
"""

from __future__ import annotations

import calendar as _weekday_names
import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as _holidays

from cronwire_server.core.errors import FieldViolation, InvalidArgument
from cronwire_server.core.model import AllOfSpec, AnyOfSpec, BusinessDaySpec, Calendar, Schedule, TimeRange

MAX_DESCRIPTION = 2048
# Entries per list of one calendar: a calendar is a rule set, not a date table of decades.
MAX_ENTRIES = 1000
# Calendars one calendar or schedule may reach through include/exclude, itself counted.
MAX_REACHED = 64
# Excluded stretches a search for the next tick that runs may step over (a year and a month of
# excluded days), after which the schedule shows no next fire time. GetSchedule and
# ListSchedules compute it on the event loop: 4-17 ms for a schedule that reaches the bound.
MAX_SKIPPED_STRETCHES = 400
MINUTES_PER_DAY = 24 * 60
FIRST_YEAR, LAST_YEAR = 1900, 2200

WEEKDAY_NAMES = {n + 1: _weekday_names.day_name[n] for n in range(7)}


# --- validation ---------------------------------------------------------------


@functools.cache
def _supported() -> dict[str, frozenset[str]]:
    return {country: frozenset(subs) for country, subs in _holidays.list_supported_countries().items()}


@functools.lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The IANA zone `name`; ValueError naming it when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a known IANA time zone (e.g. Europe/Berlin)") from None


def validate_calendar(cal: Calendar) -> None:
    """Raise InvalidArgument naming every bad field (paths relative to the Calendar message).

    The calendars it names are checked by `check_references`, which needs the stored ones.
    """
    violations: list[FieldViolation] = []
    bad = violations.append
    try:
        zone(cal.time_zone)
    except ValueError as e:
        bad(FieldViolation("time_zone", str(e)))
    if len(cal.description) > MAX_DESCRIPTION:
        bad(FieldViolation("description", f"must be at most {MAX_DESCRIPTION} characters"))
    for field in (
        "dates",
        "yearly_dates",
        "public_holidays",
        "time_ranges",
        "include_calendars",
        "exclude_calendars",
    ):
        if len(getattr(cal, field)) > MAX_ENTRIES:
            bad(FieldViolation(field, f"holds more than {MAX_ENTRIES} entries"))
    for i, span in enumerate(cal.dates[:MAX_ENTRIES]):
        if span.end < span.start:
            bad(FieldViolation(f"dates[{i}].end_date", f"{span.end} is before start_date {span.start}"))
    for i, yearly in enumerate(cal.yearly_dates[:MAX_ENTRIES]):
        if not 1 <= yearly.month <= 12:
            bad(FieldViolation(f"yearly_dates[{i}].month", f"{yearly.month} is not a month (1 to 12)"))
        elif not 1 <= yearly.day <= _weekday_names.monthrange(2000, yearly.month)[1]:
            bad(FieldViolation(f"yearly_dates[{i}].day", f"month {yearly.month} has no day {yearly.day}"))
    for i, weekday in enumerate(cal.weekdays):
        if not 1 <= weekday <= 7:
            bad(FieldViolation(f"weekdays[{i}]", "must be a day of the week (MONDAY to SUNDAY)"))
        elif weekday in cal.weekdays[:i]:
            bad(FieldViolation(f"weekdays[{i}]", f"{WEEKDAY_NAMES[weekday]} is listed twice"))
    for i, rule in enumerate(cal.public_holidays[:MAX_ENTRIES]):
        subdivisions = _supported().get(rule.country)
        if subdivisions is None:
            bad(
                FieldViolation(
                    f"public_holidays[{i}].country",
                    f"{rule.country!r} is not a country the holidays package knows "
                    "(ISO 3166-1 alpha-2, upper case, e.g. DE, US, GB)",
                )
            )
        elif rule.subdivision and rule.subdivision not in subdivisions:
            known = ", ".join(sorted(subdivisions)[:80]) or "none"
            bad(
                FieldViolation(
                    f"public_holidays[{i}].subdivision",
                    f"{rule.subdivision!r} is not a subdivision of {rule.country}; known: {known}",
                )
            )
    for i, hours in enumerate(cal.time_ranges[:MAX_ENTRIES]):
        if not 0 <= hours.start < hours.end <= MINUTES_PER_DAY:
            bad(FieldViolation(f"time_ranges[{i}]", "end_time must be after start_time (24:00 at most)"))
    for field in ("include_calendars", "exclude_calendars"):
        for i, other in enumerate(getattr(cal, field)):
            if other == cal.id:
                bad(FieldViolation(f"{field}[{i}]", "a calendar cannot name itself"))
    if violations:
        raise InvalidArgument(violations)


def references(cal: Calendar) -> tuple[str, ...]:
    """The ids of the calendars `cal` names directly, each once, in order."""
    return tuple(dict.fromkeys((*cal.include_calendars, *cal.exclude_calendars)))


def check_references(cal: Calendar, stored: Mapping[str, Calendar]) -> dict[str, Calendar]:
    """The calendars `cal` reaches (by id, `cal` itself included as given), from `stored` (every
    calendar of its namespace that may be reached). InvalidArgument naming the field when one
    does not exist, when they make a cycle (the path named), or when they are too many."""
    for field in ("include_calendars", "exclude_calendars"):
        for i, other in enumerate(getattr(cal, field)):
            if other != cal.id and other not in stored:
                raise InvalidArgument.field(f"{field}[{i}]", f"calendar {other!r} does not exist")
    world = {**stored, cal.id: cal}
    for field in ("include_calendars", "exclude_calendars"):
        for i, other in enumerate(getattr(cal, field)):
            cycle = _path_back(world, other, cal.id, [cal.id, other])
            if cycle is not None:
                raise InvalidArgument.field(f"{field}[{i}]", "makes a cycle: " + " -> ".join(cycle))
    reached = reach(world, [cal.id])
    if len(reached) > MAX_REACHED:
        raise InvalidArgument.field(
            "include_calendars", f"reaches more than {MAX_REACHED} calendars through include/exclude"
        )
    return reached


def _path_back(world: Mapping[str, Calendar], start: str, target: str, path: list[str]) -> list[str] | None:
    stack = [(start, path)]
    seen: set[str] = set()
    while stack:
        current, trail = stack.pop()
        if current in seen or current not in world:
            continue
        seen.add(current)
        for nxt in references(world[current]):
            if nxt == target:
                return [*trail, nxt]
            stack.append((nxt, [*trail, nxt]))
    return None


def reach(world: Mapping[str, Calendar], roots: Iterable[str]) -> dict[str, Calendar]:
    """`roots` and every calendar they name, directly or not, by id (missing ones left out)."""
    found: dict[str, Calendar] = {}
    stack = list(roots)
    while stack:
        current = stack.pop()
        if current in found or current not in world:
            continue
        found[current] = world[current]
        stack.extend(references(world[current]))
    return found


# --- what a calendar holds ----------------------------------------------------


@functools.lru_cache(maxsize=2048)
def public_holidays(country: str, subdivision: str, year: int) -> Mapping[date, str]:
    """The public holidays of `country` (and `subdivision`) in `year`, date -> name."""
    found = _holidays.country_holidays(country, subdiv=subdivision or None, years=year)
    return {day: str(name) for day, name in sorted(found.items())}


def _day_reason(cal: Calendar, day: date) -> str | None:
    """Why a day rule of `cal` names `day`; None when none does."""
    for span in cal.dates:
        if span.start <= day <= span.end:
            return f"date {span.start}" if span.start == span.end else f"dates {span.start} to {span.end}"
    for yearly in cal.yearly_dates:
        if (day.month, day.day) == (yearly.month, yearly.day):
            return f"yearly date {yearly.month:02d}-{yearly.day:02d}"
    if day.isoweekday() in cal.weekdays:
        return WEEKDAY_NAMES[day.isoweekday()]
    for rule in cal.public_holidays:
        name = public_holidays(rule.country, rule.subdivision, day.year).get(day)
        if name is not None:
            where = f"{rule.country}-{rule.subdivision}" if rule.subdivision else rule.country
            return f"public holiday in {where}: {name}"
    return None


def _has_day_rules(cal: Calendar) -> bool:
    return bool(cal.dates or cal.yearly_dates or cal.weekdays or cal.public_holidays)


def _minutes(local: datetime) -> float:
    return local.hour * 60 + local.minute + (local.second + local.microsecond / 1e6) / 60


def _format_minutes(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _own_reason(cal: Calendar, local: datetime) -> str | None:
    if _has_day_rules(cal):
        reason = _day_reason(cal, local.date())
        if reason is None:
            return None
    elif cal.time_ranges:
        reason = "every day"
    else:
        return None
    if cal.time_ranges:
        minutes = _minutes(local)
        span = next((s for s in cal.time_ranges if s.start <= minutes < s.end), None)
        if span is None:
            return None
        reason += f", {_format_minutes(span.start)}-{_format_minutes(span.end)}"
    return reason


def holds(calendars: Mapping[str, Calendar], calendar_id: str, instant: datetime) -> str | None:
    """Why calendar `calendar_id` holds `instant` (for people); None when it does not.

    Calendars it names that are not in `calendars` hold nothing.
    """
    return _holds(calendars, calendar_id, instant, 0)


def _holds(calendars: Mapping[str, Calendar], calendar_id: str, instant: datetime, depth: int) -> str | None:
    cal = calendars.get(calendar_id)
    if cal is None or depth > MAX_REACHED:  # a cycle never gets stored; this bounds it anyway
        return None
    local = instant.astimezone(zone(cal.time_zone))
    reason = _own_reason(cal, local)
    if reason is not None:
        reason = f"{local.date()}: {reason}"
    else:
        for other in cal.include_calendars:
            found = _holds(calendars, other, instant, depth + 1)
            if found is not None:
                reason = f"{found} (calendar {other})"
                break
    if reason is None:
        return None
    if any(_holds(calendars, other, instant, depth + 1) is not None for other in cal.exclude_calendars):
        return None
    return reason


# --- schedules ----------------------------------------------------------------


@dataclass(frozen=True)
class Exclusion:
    """Why a schedule's calendars exclude a tick: the calendar's id and a reason for people."""

    calendar_id: str
    reason: str

    @property
    def note(self) -> str:
        return f"excluded by calendar {self.calendar_id}: {self.reason}"


def exclusion(schedule: Schedule, tick: datetime) -> Exclusion | None:
    """The first of the schedule's calendars that excludes `tick`: an exclude calendar that
    holds it, else an only-on calendar that does not; None when the tick runs."""
    calendars = schedule.calendars
    for calendar_id in schedule.exclude_calendars:
        reason = holds(calendars, calendar_id, tick)
        if reason is not None:
            return Exclusion(calendar_id, reason)
    for calendar_id in schedule.only_on_calendars:
        if holds(calendars, calendar_id, tick) is None:
            return Exclusion(calendar_id, _why_not(calendars, calendar_id, tick))
    return None


def _why_not(calendars: Mapping[str, Calendar], calendar_id: str, tick: datetime) -> str:
    """Why calendar `calendar_id` does not hold `tick`, for an only-on calendar's exclusion."""
    cal = calendars.get(calendar_id)
    local = tick.astimezone(zone(cal.time_zone if cal else "UTC"))
    when = f"{local.date()} ({WEEKDAY_NAMES[local.isoweekday()]}) {local.strftime('%H:%M')}"
    if cal is not None:
        added = _own_reason(cal, local) is not None or any(
            holds(calendars, other, tick) is not None for other in cal.include_calendars
        )
        for other in cal.exclude_calendars if added else ():
            reason = holds(calendars, other, tick)
            if reason is not None:
                return f"{when} is taken away from it by calendar {other} ({reason}) (only_on_calendars)"
    return f"{when} is not on it (only_on_calendars)"


def uses_calendars(schedule: Schedule) -> bool:
    """Whether calendars may exclude the schedule's ticks (its trigger's calendars aside)."""
    return bool(schedule.exclude_calendars or schedule.only_on_calendars)


def trigger_references(spec: object, path: str = "trigger") -> list[tuple[str, str]]:
    """(field path, calendar id) of every calendar a trigger tree names (business-day leaves)."""
    if isinstance(spec, BusinessDaySpec):
        return [(f"{path}.business_day.calendar", spec.calendar_id)]
    if isinstance(spec, AnyOfSpec | AllOfSpec):
        kind = "any_of" if isinstance(spec, AnyOfSpec) else "all_of"
        return [
            ref
            for i, child in enumerate(spec.triggers)
            for ref in trigger_references(child, f"{path}.{kind}.triggers[{i}]")
        ]
    return []


def schedule_references(schedule: Schedule) -> list[tuple[str, str]]:
    """(field path, calendar id) of every calendar the schedule names, its trigger's included."""
    return [
        *((f"exclude_calendars[{i}]", c) for i, c in enumerate(schedule.exclude_calendars)),
        *((f"only_on_calendars[{i}]", c) for i, c in enumerate(schedule.only_on_calendars)),
        *trigger_references(schedule.trigger),
    ]


def next_boundary(calendars: Iterable[Calendar], instant: datetime) -> datetime:
    """The first instant after `instant` where one of `calendars` may change its mind: a local
    midnight or a time range's edge in one of their zones. Between two boundaries every one of
    them holds all instants or none."""
    best: datetime | None = None
    for cal in calendars:
        tz = zone(cal.time_zone)
        local = instant.astimezone(tz)
        day = local.date()
        candidates = [datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)]
        for span in cal.time_ranges:
            for edge in (span.start, span.end):
                if 0 < edge < MINUTES_PER_DAY:
                    candidates.append(datetime.combine(day, time(edge // 60, edge % 60), tzinfo=tz))
        for candidate in candidates:
            utc = candidate.astimezone(UTC)
            if utc > instant and (best is None or utc < best):
                best = utc
    return best if best is not None else instant + timedelta(days=1)


def stretch_end(schedule: Schedule, tick: datetime) -> datetime:
    """An instant after `tick` before which every instant is excluded as `tick` is (the next
    boundary of the schedule's calendars)."""
    return next_boundary(schedule.calendars.values(), tick)


# --- previews -----------------------------------------------------------------


@dataclass(frozen=True)
class CalendarDay:
    day: date
    # Empty: the whole day.
    time_ranges: tuple[TimeRange, ...]
    reason: str


def year_days(calendars: Mapping[str, Calendar], calendar_id: str, year: int) -> Iterator[CalendarDay]:
    """The days of `year` (in the calendar's zone) that `calendar_id` holds, whole or in part."""
    cal = calendars[calendar_id]
    tz = zone(cal.time_zone)
    reached = list(reach(calendars, [calendar_id]).values())
    day = date(year, 1, 1)
    while day.year == year:
        start = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
        end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
        spans: list[tuple[datetime, datetime]] = []
        reason = ""
        at = start
        while at < end:
            until = min(next_boundary(reached, at), end)
            found = holds(calendars, calendar_id, at)
            if found is not None:
                reason = reason or found.split(": ", 1)[-1]
                if spans and spans[-1][1] == at:
                    spans[-1] = (spans[-1][0], until)
                else:
                    spans.append((at, until))
            at = until
        if spans:
            whole = spans == [(start, end)]
            ranges = () if whole else tuple(_local_range(s, e, tz, day) for s, e in spans)
            yield CalendarDay(day, ranges, reason)
        day += timedelta(days=1)


def _local_range(start: datetime, end: datetime, tz: ZoneInfo, day: date) -> TimeRange:
    def minutes(instant: datetime) -> int:
        local = instant.astimezone(tz)
        return MINUTES_PER_DAY if local.date() > day else local.hour * 60 + local.minute

    return TimeRange(minutes(start), minutes(end))
