"""Trigger arithmetic: when a schedule fires, computed by APScheduler 3.

The dispatcher keeps each schedule's next fire time in the database and asks
this module for the one after it; nothing here keeps state between calls.

Semantics, where APScheduler 3 alone would differ from what cron users expect:

- Cron expressions have 5 fields (`minute hour day month day-of-week`) or 6
  (`second` first). Day-of-week uses crontab numbering, 0 and 7 are Sunday;
  APScheduler 3 counts 0 as Monday even in `CronTrigger.from_crontab`, so the
  field is rewritten into weekday names before APScheduler sees it.
- As in POSIX cron, when both day-of-month and day-of-week are restricted (do
  not start with `*`), a day matching either one fires (APScheduler requires both).
- A wall time that does not exist (a daylight-saving gap) fires when the gap
  ends plus the same offset into it: `30 2 * * *` in Europe/Berlin fires at
  03:30 CEST on the spring-forward day. That is what APScheduler 3.11 does (it
  reads the wall time with the offset in force before the gap); `preview`
  flags such ticks with `in_dst_gap`.
- A wall time that occurs twice (a daylight-saving fold) fires once, at its
  first occurrence, unless the hour field is a wildcard (`0 * * * *` fires in
  both repeated hours, as in Vixie cron). APScheduler 3.11 would fire twice.
- Interval ticks are counted from `start_time`, or else from a stable anchor
  the caller passes (the schedule's creation time), in exact elapsed time.
- Jitter is not part of the trigger; the fire times here are exact.

Every returned datetime is aware and in UTC.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import AndTrigger, OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from cronwire_server.errors import FieldViolation, InvalidArgument
from cronwire_server.model import (
    AllOfSpec,
    AnyOfSpec,
    CronSpec,
    DateSpec,
    IntervalSpec,
    Schedule,
    TriggerSpec,
)

__all__ = [
    "PreviewTime",
    "build_trigger",
    "describe_fire_time",
    "fire_times",
    "fire_times_between",
    "next_fire_time",
    "preview",
    "validate_schedule_timing",
]

log = logging.getLogger(__name__)

_TICK = timedelta(microseconds=1)
# Bounds every search loop: AndTrigger children that never agree, or a
# fixed-hour cron skipping a whole repeated hour second by second (3600 steps).
_MAX_STEPS = 10_000
# Where the "does this cron ever fire" check starts; 2000 is a leap year.
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class PreviewTime:
    """One computed fire time, as PreviewSchedule and BackfillSchedule report it."""

    fire_time: datetime  # UTC
    local_time: datetime  # the same instant in the schedule's time zone
    in_dst_gap: bool  # the wall time the trigger named did not exist; the tick was moved
    in_dst_fold: bool  # the wall time occurs twice that day; the tick is its first occurrence


# --- validation ---------------------------------------------------------------


def validate_schedule_timing(schedule: Schedule) -> None:
    """Raise InvalidArgument naming every bad timing field of `schedule`.

    Paths are relative to the Schedule message (`trigger.cron.expression`,
    `trigger.any_of.triggers[1].interval.every`, `time_zone`, ...).
    """
    violations: list[FieldViolation] = []
    _check_trigger(schedule.trigger, "trigger", violations)
    try:
        _zone(schedule.time_zone)
    except ValueError as e:
        violations.append(FieldViolation("time_zone", str(e)))
    if (
        schedule.start_time is not None
        and schedule.end_time is not None
        and _utc(schedule.end_time) < _utc(schedule.start_time)
    ):
        violations.append(FieldViolation("end_time", "must not be before start_time"))
    if schedule.jitter is not None and schedule.jitter < timedelta(0):
        violations.append(FieldViolation("jitter", "must not be negative"))
    if schedule.catchup_window < timedelta(0):
        violations.append(FieldViolation("catchup_window", "must not be negative"))
    if violations:
        raise InvalidArgument(violations)


def _check_trigger(spec: object, path: str, out: list[FieldViolation]) -> None:
    if isinstance(spec, CronSpec):
        where = f"{path}.cron.expression"
        if not spec.expression.strip():
            out.append(FieldViolation(where, "required: a cron expression such as `0 9 * * 1-5`"))
            return
        try:
            fields = _parse_cron(spec.expression)
        except ValueError as e:
            out.append(FieldViolation(where, str(e)))
            return
        if _cron(fields, UTC).get_next_fire_time(None, _EPOCH) is None:
            out.append(FieldViolation(where, "never matches a date (such as 30 February)"))
    elif isinstance(spec, IntervalSpec):
        if spec.every <= timedelta(0):
            out.append(FieldViolation(f"{path}.interval.every", "must be positive"))
    elif isinstance(spec, DateSpec):
        pass
    elif isinstance(spec, AnyOfSpec | AllOfSpec):
        kind = "any_of" if isinstance(spec, AnyOfSpec) else "all_of"
        if len(spec.triggers) < 2:
            out.append(
                FieldViolation(
                    f"{path}.{kind}.triggers", f"needs two or more triggers, got {len(spec.triggers)}"
                )
            )
        for i, child in enumerate(spec.triggers):
            _check_trigger(child, f"{path}.{kind}.triggers[{i}]", out)
    else:
        out.append(FieldViolation(path, "required: one of cron, interval, date, any_of, all_of"))


def _zone(name: str) -> tzinfo:
    """The IANA zone `name` ("" means UTC); ValueError when unknown."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA time zone {name!r}; use a name such as `Europe/Berlin`") from None


def _utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive datetime is read as UTC, as protobuf Timestamps are."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


# --- cron expressions ---------------------------------------------------------

_FIELDS = ("second", "minute", "hour", "day", "month", "day_of_week")
_LABELS = {
    "second": "second",
    "minute": "minute",
    "hour": "hour",
    "day": "day-of-month",
    "month": "month",
    "day_of_week": "day-of-week",
}
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab order: 0 = Sunday
_WEEKDAY_ITEM = re.compile(
    r"(?P<first>\*|[0-9]+|[a-zA-Z]+)(?:-(?P<last>[0-9]+|[a-zA-Z]+))?(?:/(?P<step>[0-9]+))?"
)


@dataclass(frozen=True)
class _CronFields:
    """A cron expression split into APScheduler's field arguments."""

    values: tuple[tuple[str, str], ...]  # (APScheduler field name, expression)
    either_day: bool  # both day fields restricted: a day matching either fires
    hour_wildcard: bool  # repeated (DST fold) hours fire twice


@functools.lru_cache(maxsize=1024)
def _parse_cron(expression: str) -> _CronFields:
    """Split and check `expression`; ValueError lists each bad field."""
    parts = expression.split()
    if len(parts) not in (5, 6):
        raise ValueError(
            f"expected 5 fields (minute hour day-of-month month day-of-week) or 6 (second first), "
            f"got {len(parts)}"
        )
    if len(parts) == 5:
        parts.insert(0, "0")
    values = dict(zip(_FIELDS, parts, strict=True))
    errors: list[str] = []
    for name, expr in values.items():
        try:
            if name == "day_of_week":
                expr = values[name] = _weekday_names(expr)
            # APScheduler's own field parser, one field at a time, so each error names its field.
            CronTrigger.FIELDS_MAP[name](name, expr)
        except ValueError as e:
            errors.append(f"{_LABELS[name]}: {e}")
    if errors:
        raise ValueError("; ".join(errors))
    return _CronFields(
        values=tuple(values.items()),
        either_day=not parts[3].startswith("*") and not parts[5].startswith("*"),
        hour_wildcard=parts[2].startswith("*"),
    )


def _weekday_names(field: str) -> str:
    """Rewrite a crontab day-of-week field (0 or 7 = Sunday) as APScheduler weekday names."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for item in field.split(","):
        match = _WEEKDAY_ITEM.fullmatch(item)
        if match is None:
            raise ValueError(f"unrecognized expression {item!r}; use 0-7 (0 and 7 are Sunday) or sun-sat")
        first, last, step_text = match["first"], match["last"], match["step"]
        step = int(step_text) if step_text else 1
        if step == 0:
            raise ValueError("the step must be higher than 0")
        if first == "*":
            if last is not None:
                raise ValueError(f"unrecognized expression {item!r}")
            low, high = 0, 6
        else:
            low = _weekday(first)
            high = _weekday(last) if last else (7 if step_text else low)
            if last and high == 0 and low > 0:
                high = 7  # `5-0`, `fri-sun`: Sunday closes the week
            if low > high:
                raise ValueError(f"in {item!r} the first day is after the last")
        days.update(d % 7 for d in range(low, high + 1, step))
    return ",".join(_WEEKDAYS[d] for d in sorted(days))


def _weekday(token: str) -> int:
    if token.isdigit():
        value = int(token)
        if value > 7:
            raise ValueError(f"{value} is not a weekday; use 0-7 (0 and 7 are Sunday)")
        return value
    try:
        return _WEEKDAYS.index(token.lower())
    except ValueError:
        raise ValueError(f"unknown weekday name {token!r}; use sun, mon, tue, wed, thu, fri, sat") from None


def _cron(fields: _CronFields, zone: tzinfo) -> BaseTrigger:
    values = dict(fields.values)
    if not fields.either_day:
        return _Cron(fields.hour_wildcard, timezone=zone, **values)
    by_month_day = {**values, "day_of_week": "*"}
    by_weekday = {**values, "day": "*"}
    return _Or(
        [
            _Cron(fields.hour_wildcard, timezone=zone, **by_month_day),
            _Cron(fields.hour_wildcard, timezone=zone, **by_weekday),
        ]
    )


# --- APScheduler triggers, adjusted ---------------------------------------------
#
# Every trigger built here answers get_next_fire_time(None, now) with the first
# fire time at or after `now`. This module only ever asks that way: passing a
# previous fire time would make IntervalTrigger children of an OrTrigger count
# from another child's tick.


class _Cron(CronTrigger):  # type: ignore[misc]  # APScheduler has no type hints
    """CronTrigger that fires a repeated (DST fold) wall time only once, unless the hour is a wildcard."""

    __slots__ = ("hour_wildcard",)

    def __init__(self, hour_wildcard: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hour_wildcard = hour_wildcard

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        for _ in range(_MAX_STEPS):
            fire: datetime | None = super().get_next_fire_time(previous_fire_time, now)
            if fire is None or self.hour_wildcard or not _second_occurrence(fire, self.timezone):
                return fire
            previous_fire_time, now = None, _utc(fire) + _TICK
        return None


class _Interval(IntervalTrigger):  # type: ignore[misc]
    """IntervalTrigger in exact integer microseconds.

    APScheduler 3 counts ticks in float timestamps, which can land a tick a
    microsecond off; ticks are keys (schedule + tick fires once), so they must be exact.
    """

    def __init__(self, every: timedelta, anchor: datetime, end: datetime | None, zone: tzinfo) -> None:
        super().__init__(seconds=every.total_seconds(), start_date=anchor, end_date=end, timezone=zone)
        self.interval = every
        self.interval_length = every.total_seconds()

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        start = _utc(self.start_date)
        every: timedelta = self.interval
        if previous_fire_time is not None:
            fire = _utc(previous_fire_time) + every
        elif start >= now:
            fire = start
        else:
            fire = start + every * -((start - now) // every)  # ceil division
        if self.end_date is not None and fire > self.end_date:
            return None
        return fire.astimezone(self.timezone)


class _Date(DateTrigger):  # type: ignore[misc]
    """DateTrigger that reports nothing once `now` is past its date (APScheduler's returns it regardless)."""

    __slots__ = ()

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        run_date: datetime = self.run_date
        if previous_fire_time is not None or run_date < now:
            return None
        return run_date


class _Or(OrTrigger):  # type: ignore[misc]
    """OrTrigger comparing in UTC: datetimes sharing a tzinfo compare by wall time, wrong in a fold."""

    __slots__ = ()

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        fires = [t.get_next_fire_time(previous_fire_time, now) for t in self.triggers]
        found = [_utc(f) for f in fires if f is not None]
        return min(found) if found else None


class _And(AndTrigger):  # type: ignore[misc]
    """AndTrigger comparing in UTC and giving up after a bounded search.

    APScheduler's loops forever when its children never agree (two intervals
    out of phase); here that ends the schedule, with a warning.
    """

    __slots__ = ()

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        for _ in range(_MAX_STEPS):
            fires = [t.get_next_fire_time(previous_fire_time, now) for t in self.triggers]
            if any(f is None for f in fires):
                return None
            found = [_utc(f) for f in fires if f is not None]
            if min(found) == max(found):
                return found[0]
            now = max(found)
        log.warning(
            "all_of trigger found no common fire time within %d steps; treating it as ended", _MAX_STEPS
        )
        return None


class _Bounded(BaseTrigger):  # type: ignore[misc]
    """Applies the schedule's start and end times to any trigger (combinators have no bounds)."""

    __slots__ = ("end", "start", "trigger")

    def __init__(self, trigger: BaseTrigger, start: datetime | None, end: datetime | None) -> None:
        self.trigger = trigger
        self.start = start
        self.end = end

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        if self.start is not None and now < self.start:
            now = self.start
        fire: datetime | None = self.trigger.get_next_fire_time(previous_fire_time, now)
        if fire is None or (self.end is not None and fire > self.end):
            return None
        return fire

    def __str__(self) -> str:
        return f"bounded[{self.trigger}, {self.start}, {self.end}]"


def _second_occurrence(moment: datetime, zone: tzinfo) -> bool:
    """Whether `moment` is the second time its wall-clock time occurs (DST fold)."""
    local = _utc(moment).astimezone(zone)
    return local.fold == 1 and _ambiguous(local)


def _ambiguous(local: datetime) -> bool:
    return local.replace(fold=0).utcoffset() != local.replace(fold=1).utcoffset()


# --- building -----------------------------------------------------------------


def build_trigger(schedule: Schedule, anchor: datetime) -> BaseTrigger:
    """The APScheduler trigger of `schedule`, with its zone and start/end applied.

    `anchor` (the schedule's creation time) is where interval ticks count from
    when the schedule has no start_time; it is truncated to whole seconds.
    Ask it `get_next_fire_time(None, now)` for the first fire time at or after
    `now`, or better use `next_fire_time`. Built triggers are cached (they are
    stateless), so this is cheap to call per tick. Raises InvalidArgument.
    """
    start = _utc(schedule.start_time) if schedule.start_time is not None else None
    end = _utc(schedule.end_time) if schedule.end_time is not None else None
    needs_anchor = start is None and _has_interval(schedule.trigger)
    base = _utc(anchor).replace(microsecond=0) if needs_anchor else None
    return _cached_trigger(schedule.trigger, schedule.time_zone, start, end, base)


@functools.lru_cache(maxsize=4096)
def _cached_trigger(
    spec: TriggerSpec, zone_name: str, start: datetime | None, end: datetime | None, anchor: datetime | None
) -> BaseTrigger:
    violations: list[FieldViolation] = []
    _check_trigger(spec, "trigger", violations)
    try:
        zone = _zone(zone_name)
    except ValueError as e:
        violations.append(FieldViolation("time_zone", str(e)))
    if violations:
        raise InvalidArgument(violations)
    interval_anchor = start or anchor
    if isinstance(spec, IntervalSpec) and interval_anchor is not None:
        # The interval's own start is its bound as well as its anchor.
        return _Bounded(_Interval(spec.every, interval_anchor, end, zone), start, end)
    return _Bounded(_build(spec, zone, interval_anchor), start, end)


def _build(spec: TriggerSpec, zone: tzinfo, anchor: datetime | None) -> BaseTrigger:
    if isinstance(spec, CronSpec):
        return _cron(_parse_cron(spec.expression), zone)
    if isinstance(spec, IntervalSpec):
        if anchor is None:
            raise ValueError("an interval trigger needs an anchor")
        return _Interval(spec.every, anchor, None, zone)
    if isinstance(spec, DateSpec):
        return _Date(run_date=_utc(spec.run_time), timezone=zone)
    children = [_build(child, zone, anchor) for child in spec.triggers]
    return _Or(children) if isinstance(spec, AnyOfSpec) else _And(children)


def _has_interval(spec: TriggerSpec) -> bool:
    if isinstance(spec, IntervalSpec):
        return True
    if isinstance(spec, AnyOfSpec | AllOfSpec):
        return any(_has_interval(child) for child in spec.triggers)
    return False


# --- fire times ---------------------------------------------------------------


def _next_after(trigger: BaseTrigger, after: datetime) -> datetime | None:
    fire: datetime | None = trigger.get_next_fire_time(None, after + _TICK)
    if fire is None:
        return None
    fire = _utc(fire)
    if fire <= after:  # would repeat a tick forever; no trigger built here does this
        raise RuntimeError(f"trigger {trigger} went backwards: {fire} after {after}")
    return fire


def next_fire_time(schedule: Schedule, after: datetime, anchor: datetime) -> datetime | None:
    """The first fire time strictly after `after`, in UTC; None when the schedule has ended."""
    return _next_after(build_trigger(schedule, anchor), _utc(after))


def _iter_fire_times(schedule: Schedule, after: datetime, anchor: datetime) -> Iterator[datetime]:
    trigger = build_trigger(schedule, anchor)
    fire: datetime | None = _utc(after)
    while fire is not None:
        fire = _next_after(trigger, fire)
        if fire is not None:
            yield fire


def fire_times(schedule: Schedule, after: datetime, count: int, anchor: datetime) -> list[datetime]:
    """The next `count` fire times strictly after `after`, in UTC; fewer when the schedule ends."""
    times: list[datetime] = []
    if count <= 0:
        return times
    for fire in _iter_fire_times(schedule, after, anchor):
        times.append(fire)
        if len(times) >= count:
            break
    return times


def fire_times_between(
    schedule: Schedule, start: datetime, end: datetime, anchor: datetime, limit: int
) -> Iterator[datetime]:
    """The fire times in [start, end), in UTC and in order, at most `limit` of them."""
    if limit <= 0:
        return
    end = _utc(end)
    for n, fire in enumerate(_iter_fire_times(schedule, _utc(start) - _TICK, anchor), start=1):
        if fire >= end:
            return
        yield fire
        if n >= limit:
            return


def preview(schedule: Schedule, after: datetime, count: int, anchor: datetime) -> list[PreviewTime]:
    """The next `count` fire times after `after`, each with its local time and DST flags."""
    trigger = build_trigger(schedule, anchor)
    zone = _zone(schedule.time_zone)
    return [_describe(trigger, fire, zone) for fire in fire_times(schedule, after, count, anchor)]


def describe_fire_time(schedule: Schedule, fire: datetime, anchor: datetime) -> PreviewTime:
    """`fire`, a fire time of `schedule` (from `fire_times_between`, say), with its DST flags."""
    return _describe(build_trigger(schedule, anchor), _utc(fire), _zone(schedule.time_zone))


def _describe(trigger: BaseTrigger, fire: datetime, zone: tzinfo) -> PreviewTime:
    local = fire.astimezone(zone)
    return PreviewTime(
        fire_time=fire,
        local_time=local,
        # A tick the trigger would not name when asked at that instant was
        # moved there: its wall time fell into a gap.
        in_dst_gap=not _names(trigger, fire),
        in_dst_fold=_ambiguous(local) and _named_by_cron(trigger, fire),
    )


def _names(trigger: BaseTrigger, fire: datetime) -> bool:
    """Whether `trigger` fires at exactly `fire` when asked from that instant."""
    if isinstance(trigger, _Bounded):
        return _names(trigger.trigger, fire)
    if isinstance(trigger, _Or):
        return any(_names(t, fire) for t in trigger.triggers)
    if isinstance(trigger, _And):
        return all(_names(t, fire) for t in trigger.triggers)
    if isinstance(trigger, _Cron):
        found = trigger.get_next_fire_time(None, fire)
        return found is not None and _utc(found) == fire
    return True  # intervals and dates are instants, never in a gap


def _named_by_cron(trigger: BaseTrigger, fire: datetime) -> bool:
    """Whether a wall-clock (cron) part of `trigger` names `fire`; folds matter only to those."""
    if isinstance(trigger, _Bounded):
        return _named_by_cron(trigger.trigger, fire)
    if isinstance(trigger, _Or | _And):
        return any(_named_by_cron(t, fire) for t in trigger.triggers)
    if isinstance(trigger, _Cron):
        return _names(trigger, fire)
    return False
