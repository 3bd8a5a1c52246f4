"""Trigger arithmetic: when a schedule fires.

The dispatcher keeps each schedule's next fire time in the database and asks
this module for the one after it; nothing here keeps state between calls.

Cron expressions follow Debian (Vixie) cron, computed by cronsim:

- 5 fields (`minute hour day month day-of-week`) or 6 (`second` first), or a
  macro (`@hourly`, `@daily`/`@midnight`, `@weekly`, `@monthly`,
  `@yearly`/`@annually`). Month and weekday names go anywhere numbers go,
  steps may be wider than their range (`*/60` is minute 0), `a-a/n` is `a`,
  0 and 7 are Sunday, `5-0` runs Friday to Sunday. Day-of-month also takes
  `L` (last day) and `LW` (last weekday); day-of-week `5L` (last Friday) and
  `5#3` (third Friday).
- When both day fields are restricted (neither starts with `*`), a day
  matching either fires.
- An expression no date can match (`0 0 31 2 *`) is refused; every search has
  a step budget, so no expression costs more than a few milliseconds.
- Daylight saving, per the trigger's DstPolicy: a fixed-time expression
  (neither minute nor hour starts with `*`) fires each wall time once, at its
  first occurrence when the clock repeats it; a wall time the clock skips fires
  at the jump (DEBIAN) or not at all (SKIP). A wildcard minute or hour follows
  the clock as it runs: skipped times do not exist, repeated ones fire twice.
  `preview` flags ticks moved out of a gap (`in_dst_gap`) and ticks on a
  repeated wall time (`in_dst_fold`).

Intervals, dates and their combinations are APScheduler 3 triggers, adjusted:

- Interval ticks are counted from `start_time`, or else from a stable anchor
  the caller passes (the schedule's creation time), in exact elapsed time.
- Jitter is not part of the trigger; the fire times here are exact.

Every returned datetime is aware and in UTC.
"""

from __future__ import annotations

import calendar
import functools
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import AndTrigger, OrTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from cronsim import CronSim

from cronwire_server.errors import FieldViolation, InvalidArgument
from cronwire_server.model import (
    AllOfSpec,
    AnyOfSpec,
    CronSpec,
    DateSpec,
    DstPolicy,
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
# Bounds one cron search (days looked at plus clock moves, about 2 µs each).
# The rarest valid shapes, such as `0 0 29 2 */7` (29 February on a Sunday, up
# to 40 years apart), take about 1,200.
_SEARCH_BUDGET = 5_000
# Where the check that a SKIP cron fires at all in its zone starts searching.
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
        zone = _zone(schedule.time_zone)
    except ValueError as e:
        violations.append(FieldViolation("time_zone", str(e)))
    else:
        if not violations:
            _check_skip_fires(schedule.trigger, "trigger", zone, violations)
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
            _parse_cron(spec.expression)
        except ValueError as e:
            out.append(FieldViolation(where, str(e)))
            return
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


def _check_skip_fires(spec: TriggerSpec, path: str, zone: tzinfo, out: list[FieldViolation]) -> None:
    """Refuse a DST_POLICY_SKIP cron whose every time falls in a gap (`30 2 * 3 0L` in Europe/Berlin)."""
    if isinstance(spec, CronSpec) and spec.dst_policy is DstPolicy.SKIP:
        if _Cron(_parse_cron(spec.expression), zone, spec.dst_policy).next_after(_EPOCH) is None:
            out.append(
                FieldViolation(
                    f"{path}.cron.dst_policy",
                    f"with SKIP the expression never fires in {zone}: every time it names falls "
                    f"in a daylight-saving gap; use DEBIAN to run such times at the jump",
                )
            )
    elif isinstance(spec, AnyOfSpec | AllOfSpec):
        kind = "any_of" if isinstance(spec, AnyOfSpec) else "all_of"
        for i, child in enumerate(spec.triggers):
            _check_skip_fires(child, f"{path}.{kind}.triggers[{i}]", zone, out)


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
#
# cronsim (Debian cron semantics) does the calendar arithmetic. This module
# parses the expression itself, so that every refusal names its field and
# reason and a few spellings mean what Vixie cron means (`5-5/10` is 5; cronsim
# reads it as 5-59/10), then hands cronsim an explicit equivalent. Daylight
# saving is applied here, per the trigger's DstPolicy, around cronsim's search.

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_WEEKDAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")  # crontab order: 0 (and 7) = Sunday
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_ITEM = re.compile(r"(?P<first>\*|[0-9]+|[A-Z]+)(?:-(?P<last>[0-9]+|[A-Z]+))?(?:/(?P<step>[0-9]+))?")


@dataclass(frozen=True)
class _Field:
    label: str
    low: int
    high: int  # day-of-week: 7, another Sunday, as in Vixie cron
    names: tuple[str, ...] = ()
    first_name: int = 0  # the value of names[0]

    def value(self, token: str) -> int:
        if token.isdigit():
            number = int(token)
            if not self.low <= number <= self.high:
                raise ValueError(f"{number} is out of range {self.low}-{self.high}")
            return number
        if token in self.names:
            return self.names.index(token) + self.first_name
        if self.names:
            raise ValueError(f"unknown name {token!r}; use {self.names[0]}-{self.names[-1]} or numbers")
        raise ValueError(f"{token!r} is not a number")


_SECOND = _Field("second", 0, 59)
_MINUTE = _Field("minute", 0, 59)
_HOUR = _Field("hour", 0, 23)
_DAY = _Field("day-of-month", 1, 31)
_MONTH = _Field("month", 1, 12, _MONTHS, 1)
_DAY_OF_WEEK = _Field("day-of-week", 0, 7, _WEEKDAYS, 0)
_CRON_FIELDS = (_SECOND, _MINUTE, _HOUR, _DAY, _MONTH, _DAY_OF_WEEK)


@dataclass(frozen=True)
class _CronExpr:
    """A checked cron expression, spelled for cronsim."""

    text: str  # 6 fields, numbers only, cronsim reads it as cron does
    # A wildcard minute or hour follows the wall clock through DST changes (Debian's rule).
    wall_clock: bool


@functools.lru_cache(maxsize=1024)
def _parse_cron(expression: str) -> _CronExpr:
    """Check `expression` and spell it for cronsim; ValueError names each bad field and why."""
    text = expression.strip()
    if text.startswith("@"):
        if text.lower() not in _MACROS:
            raise ValueError(f"unknown macro {text!r}; use one of {', '.join(_MACROS)}")
        text = _MACROS[text.lower()]
    parts = text.upper().split()
    if len(parts) not in (5, 6):
        raise ValueError(
            f"expected 5 fields (minute hour day-of-month month day-of-week) or 6 (second first), "
            f"got {len(parts)}"
        )
    if len(parts) == 5:
        parts.insert(0, "0")
    spelled: list[_Spelled] = []
    errors: list[str] = []
    for spec, part in zip(_CRON_FIELDS, parts, strict=True):
        try:
            spelled.append(_spell_field(spec, part))
        except ValueError as e:
            errors.append(f"{spec.label}: {e}")
    if errors:
        raise ValueError("; ".join(errors))
    cron = _CronExpr(
        " ".join(s.text for s in spelled), wall_clock=parts[1].startswith("*") or parts[2].startswith("*")
    )
    _check_some_day_matches(cron, parts, spelled[3], spelled[4].values)
    return cron


@dataclass(frozen=True)
class _Spelled:
    text: str  # the field as cronsim reads it
    values: frozenset[int]  # the plain values it names
    special: bool  # it has `L`, `LW`, `nL` or `n#k` items


def _spell_field(spec: _Field, field: str) -> _Spelled:
    """`field` as a list cronsim reads the way cron does (ValueError says what is wrong).

    A field starting with `*` keeps its `*` or `*/n` first: cronsim, like cron,
    reads a day field that starts with `*` as "any day" for the OR of the two day fields.
    """
    out: list[str] = []
    specials: list[str] = []
    values: set[int] = set()
    listed: set[int] = set()  # values of the items after a leading `*` or `*/n`
    for index, item in enumerate(field.split(",")):
        special = _special(spec, item)
        if special is not None:
            specials.append(special)
            continue
        match = _ITEM.fullmatch(item)
        if match is None:
            raise ValueError(f"cannot read {item!r}; expected a value, a range `a-b`, a step `/n`, or `*`")
        first, last, step_text = match["first"], match["last"], match["step"]
        step = int(step_text) if step_text is not None else 1
        if step == 0:
            raise ValueError(f"in {item!r} the step must be at least 1")
        if first == "*":
            if last is not None:
                raise ValueError(f"cannot read {item!r}; `*` takes no range")
            low, high = spec.low, spec.high
            if index == 0:
                out.append(f"*/{step}" if step_text is not None else "*")
                values.update(range(low, high + 1, step))
                continue
        else:
            low = spec.value(first)
            if last is not None:
                high = spec.value(last)
                if spec is _DAY_OF_WEEK and high == 0 and low > 0:
                    high = 7  # `5-0`, `FRI-SUN`: Sunday closes the week
                if low > high:
                    raise ValueError(f"in {item!r} the first value is after the last")
            else:
                high = spec.high if step_text is not None else low  # `a/n` runs to the field's end
        listed.update(range(low, high + 1, step))
    values |= listed
    out += [str(v) for v in sorted(listed)] + specials
    return _Spelled(",".join(out), frozenset(values), bool(specials))


def _special(spec: _Field, item: str) -> str | None:
    """The cronsim spelling of `L`, `LW` (day-of-month), `nL`, `n#k` (day-of-week); None for others."""
    if spec is _DAY:
        if item in ("L", "LW", "LAST"):  # `last`: APScheduler's spelling, accepted before cronsim
            return "L" if item == "LAST" else item
        if item.endswith("W") and item[:-1].isdigit():
            raise ValueError(f"{item!r}: `W` (nearest weekday) is supported only as `LW`, the last weekday")
        return None
    if spec is _DAY_OF_WEEK:
        if "#" in item:
            day, _, nth = item.partition("#")
            if not nth.isdigit() or not 1 <= int(nth) <= 5:
                raise ValueError(f"in {item!r} the week must be 1-5 (`5#3` is the third Friday)")
            return f"{spec.value(day)}#{int(nth)}"
        if item.endswith("L") and len(item) > 1:
            return f"{spec.value(item[:-1])}L"
        return None
    return None


def _check_some_day_matches(
    cron: _CronExpr, parts: list[str], days: _Spelled, months: frozenset[int]
) -> None:
    """ValueError when no date can ever match (`0 0 31 2 *`): such a schedule would never fire."""
    names = ", ".join(_MONTHS[m - 1] for m in sorted(months))
    day_and = parts[3].startswith("*") or parts[5].startswith("*")
    if day_and and not days.special and min(days.values) > max(_MONTH_DAYS[m - 1] for m in months):
        if len(days.values) == 1:
            raise ValueError(f"day-of-month: day {min(days.values)} never occurs in {names}")
        listed = ", ".join(str(d) for d in sorted(days.values))
        raise ValueError(f"day-of-month: days {listed} never occur in {names}")
    # The day fields match a date by its day, its month's length and the weekday the
    # month starts on; 2000-2027 has every month with every such combination.
    search = CronSim(cron.text, datetime(2000, 1, 1))
    seen: set[tuple[int, int, int]] = set()
    for year in range(2000, 2028):
        for month in sorted(months):
            first_weekday, length = calendar.monthrange(year, month)
            if (month, first_weekday, length) in seen:
                continue
            seen.add((month, first_weekday, length))
            if any(search.match_day(date(year, month, day)) for day in range(1, length + 1)):
                return
    raise ValueError(
        f"day-of-month {parts[3]!r} and day-of-week {parts[5]!r} never fall on the same day in {names}"
    )


class _OverBudget(Exception):
    pass


class _Search(CronSim):
    """CronSim that counts its steps (days looked at, clock moves) and stops at a budget."""

    def __init__(self, expr: str, dt: datetime, budget: int) -> None:
        self.steps = 0
        self.budget = budget
        super().__init__(expr, dt)

    def _step(self) -> None:
        self.steps += 1
        if self.steps > self.budget:
            raise _OverBudget

    def tick(self, seconds: int = 1) -> None:
        self._step()
        super().tick(seconds)

    def match_day(self, d: date) -> bool:
        self._step()
        return bool(super().match_day(d))


class _Cron(BaseTrigger):  # type: ignore[misc]  # APScheduler has no type hints
    """A cron expression read in `zone`, through DST changes as `policy` says.

    A fixed-time expression (neither minute nor hour starts with `*`) is
    searched on the wall clock: each matching wall time fires once, at its
    first occurrence when the clock repeats it; one that the clock skips fires
    at the jump (DEBIAN) or not at all (SKIP). A wildcard minute or hour
    follows the clock as it runs: skipped times do not exist, repeated ones
    fire twice.
    """

    __slots__ = ("cron", "policy", "steps", "zone")

    def __init__(self, cron: _CronExpr, zone: tzinfo, policy: DstPolicy) -> None:
        self.cron = cron
        self.zone = zone
        self.policy = policy
        self.steps = 0  # of the last search, for tests and measurements

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        found = self.next_after(_utc(now) - _TICK)
        return found[0] if found is not None else None

    def next_after(self, after: datetime) -> tuple[datetime, bool] | None:
        """The first fire time after `after` (UTC) and whether it was moved out of a gap; None: none."""
        local = after.astimezone(self.zone)
        search: _Search | None = None
        try:
            if self.cron.wall_clock and not _fixed_offset(self.zone):
                search = _Search(self.cron.text, local, _SEARCH_BUDGET)
                return next(search).astimezone(UTC), False
            wall = local.replace(tzinfo=None)
            if local.fold and _ambiguous(local):
                # The rest of the repeated wall times fired at their first occurrence.
                wall = _fold_end(local, self.zone) - timedelta(seconds=1)
            search = _Search(self.cron.text, wall, _SEARCH_BUDGET)
            for candidate in search:
                fire, moved = _instant(candidate, self.zone)
                if moved and self.policy is DstPolicy.SKIP:
                    continue
                if fire > after:
                    return fire, moved
            return None
        except StopIteration:  # cronsim found nothing within 50 years
            return None
        except OverflowError:  # past year 9999
            return None
        except _OverBudget:
            log.warning("cron %r found no fire time within %d search steps", self.cron.text, _SEARCH_BUDGET)
            return None
        finally:
            self.steps = search.steps if search is not None else 0

    def __str__(self) -> str:
        return f"cron[{self.cron.text}, {self.zone}, {self.policy.name}]"


def _fixed_offset(zone: tzinfo) -> bool:
    return zone is UTC or getattr(zone, "key", None) in ("UTC", "Etc/UTC")


def _fold_end(local: datetime, zone: tzinfo) -> datetime:
    """The first wall time after the fold that `local`, a second occurrence, is in (naive)."""
    low = _utc(local)
    high = low + (local.replace(fold=0).utcoffset() - local.utcoffset())  # type: ignore[operator]
    # Bisection to the second, as in _instant.
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) // 2
        if _ambiguous(middle.astimezone(zone)):
            low = middle
        else:
            high = middle
    return high.astimezone(zone).replace(tzinfo=None, microsecond=0)


def _instant(wall: datetime, zone: tzinfo) -> tuple[datetime, bool]:
    """The instant of naive wall time `wall` in `zone` (the first when repeated) and whether it is in a gap.

    A wall time in a gap maps to the instant the gap ends, the moment the clock jumps.
    """
    first = wall.replace(tzinfo=zone).astimezone(UTC)  # fold=0: the earlier offset
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first, False
    # In the gap: between the instant read with the later offset and `first`,
    # find the change by bisection (to the second; zones change on whole seconds).
    low, high = wall.replace(tzinfo=zone, fold=1).astimezone(UTC), first
    after_offset = high.astimezone(zone).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) // 2
        if middle.astimezone(zone).utcoffset() == after_offset:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0), True


# --- APScheduler triggers, adjusted ---------------------------------------------
#
# Every trigger built here answers get_next_fire_time(None, now) with the first
# fire time at or after `now`. This module only ever asks that way: passing a
# previous fire time would make IntervalTrigger children of an OrTrigger count
# from another child's tick.


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
        return _Cron(_parse_cron(spec.expression), zone, spec.dst_policy)
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
        found = trigger.next_after(fire - _TICK)
        return found == (fire, False)
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
