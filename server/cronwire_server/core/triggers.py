"""Trigger arithmetic: when a schedule fires.

The dispatcher keeps each schedule's next fire time in the database and asks
this module for the one after it; nothing here keeps state between calls (only
caches of built triggers and of the fire times they gave, which never change).

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
- A combination nests at most MAX_TRIGGER_DEPTH deep and holds at most
  MAX_TRIGGER_LEAVES crons, intervals and dates in all.
- One search (one next fire time) has one step budget, SEARCH_STEPS, shared by
  the whole trigger tree: an `all_of` whose triggers rarely or never agree
  costs at most that, wherever it is nested, then the search fails with
  TriggerTooExpensive (an InvalidArgument naming the combination) rather than
  running on. A caller may also give a search a deadline (SearchTimedOut).

Every returned datetime is aware and in UTC.
"""

from __future__ import annotations

import calendar
import dataclasses
import functools
import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import AndTrigger, OrTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from cronsim import CronSim
from dateutil import rrule as rfc5545

from cronwire_server.core import calendars as calendar_rules
from cronwire_server.core.errors import FieldViolation, InvalidArgument
from cronwire_server.core.model import (
    AllOfSpec,
    AnyOfSpec,
    BusinessDaySpec,
    Calendar,
    CronSpec,
    DateSpec,
    DstPolicy,
    IntervalSpec,
    RRuleSpec,
    Schedule,
    TriggerSpec,
)

__all__ = [
    "MAX_TRIGGER_DEPTH",
    "MAX_TRIGGER_LEAVES",
    "SEARCH_STEPS",
    "PreviewTime",
    "SearchBudget",
    "SearchTimedOut",
    "TriggerTooExpensive",
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
# The steps one search may take across the whole trigger tree. A step is a few
# microseconds of work: a day or clock move a cron search looks at, an interval
# or date evaluated; each cron evaluation also costs _CRON_STEPS for its fixed
# overhead. 20,000 steps are 0.1-0.2 s of CPU; an `all_of` of `0 0 * * 1` and
# `0 0 13 * *` (Monday the 13th) takes 300-750 per fire time.
SEARCH_STEPS = 20_000
_CRON_STEPS = 10
# Combinations nested in one another (`any_of` > `all_of` > `any_of` > `all_of`).
MAX_TRIGGER_DEPTH = 4
# Crons, intervals and dates in one trigger tree.
MAX_TRIGGER_LEAVES = 32
# Bounds one cron search (days looked at plus clock moves, about 2 µs each).
# The rarest valid shapes, such as `0 0 29 2 */7` (29 February on a Sunday, up
# to 40 years apart), take about 1,200.
_SEARCH_BUDGET = 5_000
# Business days: the highest n of "the n-th (last) business day of the month", and how many
# months one search looks at before it gives up (the trigger then names no fire time).
MAX_BUSINESS_DAY = 23
_BUSINESS_MONTHS = 120
# The days a count from a day of the month (`from_day`) walks at most.
_ROLL_DAYS = 62
# The days a count from a date (`from_date`, a one-off) walks at most.
_DATE_ROLL_DAYS = 366
# Where the check that a SKIP cron fires at all in its zone starts searching.
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


class TriggerTooExpensive(InvalidArgument):
    """A search ran out of its step budget: the trigger names no fire time it can afford to find."""

    reason = "TRIGGER_TOO_EXPENSIVE"


class SearchTimedOut(Exception):
    """A search passed the deadline its caller gave it."""


class _Exhausted(Exception):
    """The shared budget ran out.

    `path` names the combination to blame: the innermost `all_of` that was going round
    (its triggers disagreed at least once), else the innermost combination searching.
    """

    def __init__(self) -> None:
        super().__init__()
        self.path = ""
        self.looping = False


class SearchBudget:
    """The steps left to one search, shared by every node of the trigger tree it walks.

    Also carries an optional deadline (time.monotonic()), so that work given up
    by its caller (a preview past its timeout) stops instead of running on in a thread.
    """

    __slots__ = ("deadline", "limit", "used")

    def __init__(self, limit: int = SEARCH_STEPS, deadline: float | None = None) -> None:
        self.limit = limit
        self.used = 0
        self.deadline = deadline

    def remaining(self) -> int:
        return max(self.limit - self.used, 0)

    def charge(self, steps: int) -> None:
        self.used += steps
        if self.used > self.limit:
            raise _Exhausted
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise SearchTimedOut


@dataclass(frozen=True)
class PreviewTime:
    """One computed fire time, as PreviewSchedule and BackfillSchedule report it."""

    fire_time: datetime  # UTC
    local_time: datetime  # the same instant in the schedule's time zone
    in_dst_gap: bool  # the wall time the trigger named did not exist; the tick was moved
    in_dst_fold: bool  # the wall time occurs twice that day; the tick is its first occurrence
    # The schedule's calendar that excludes the tick (its id) and why; empty when the tick runs.
    excluded_by: str = ""
    exclusion_reason: str = ""


# --- validation ---------------------------------------------------------------


def validate_schedule_timing(schedule: Schedule) -> None:
    """Raise InvalidArgument naming every bad timing field of `schedule`.

    Paths are relative to the Schedule message (`trigger.cron.expression`,
    `trigger.any_of.triggers[1].interval.every`, `time_zone`, ...).
    """
    violations: list[FieldViolation] = []
    _check_trigger(schedule.trigger, "trigger", violations, _Shape())
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


@dataclass
class _Shape:
    """What _check_trigger has walked so far: the leaves counted, whether a limit was reported."""

    # Off for schedules already stored, which may predate the limits: the search budget bounds them.
    limited: bool = True
    leaves: int = 0
    too_deep: bool = False
    too_wide: bool = False


def _check_trigger(spec: object, path: str, out: list[FieldViolation], shape: _Shape, depth: int = 0) -> None:
    if isinstance(spec, CronSpec | IntervalSpec | DateSpec | BusinessDaySpec | RRuleSpec):
        shape.leaves += 1
        if shape.limited and shape.leaves > MAX_TRIGGER_LEAVES:
            # Reported once, at the first leaf past the limit; the rest is not even parsed.
            if not shape.too_wide:
                out.append(
                    FieldViolation(
                        path,
                        f"a trigger holds at most {MAX_TRIGGER_LEAVES} crons, intervals and dates "
                        f"in all; this is number {shape.leaves}",
                    )
                )
                shape.too_wide = True
            return
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
    elif isinstance(spec, RRuleSpec):
        try:
            _parse_rrule(spec.rule)
        except ValueError as e:
            out.append(FieldViolation(f"{path}.rrule.rule", str(e)))
    elif isinstance(spec, BusinessDaySpec):
        if not (1 <= spec.day <= MAX_BUSINESS_DAY or -MAX_BUSINESS_DAY <= spec.day <= -1):
            out.append(
                FieldViolation(
                    f"{path}.business_day.day",
                    f"must be 1 to {MAX_BUSINESS_DAY} (the n-th business day of the month) or "
                    f"-1 to -{MAX_BUSINESS_DAY} (counted from the end), got {spec.day}",
                )
            )
        if not 0 <= spec.at_minutes < 24 * 60:
            out.append(FieldViolation(f"{path}.business_day.time_of_day", "must be 00:00 to 23:59"))
        if not 0 <= spec.from_day <= 31:
            out.append(
                FieldViolation(
                    f"{path}.business_day.from_day", "must be a day of the month, 1 to 31 (0: unset)"
                )
            )
        if spec.from_date is not None and spec.from_day:
            out.append(
                FieldViolation(
                    f"{path}.business_day.from_date",
                    "cannot be combined with from_day: from_date fires once, from_day every month",
                )
            )
    elif isinstance(spec, AnyOfSpec | AllOfSpec):
        kind = "any_of" if isinstance(spec, AnyOfSpec) else "all_of"
        if shape.limited and depth >= MAX_TRIGGER_DEPTH:
            if not shape.too_deep:
                out.append(
                    FieldViolation(
                        f"{path}.{kind}",
                        f"combinations nest at most {MAX_TRIGGER_DEPTH} deep (any_of and all_of "
                        f"inside one another); this one is number {depth + 1}",
                    )
                )
                shape.too_deep = True
            return
        if len(spec.triggers) < 2:
            out.append(
                FieldViolation(
                    f"{path}.{kind}.triggers", f"needs two or more triggers, got {len(spec.triggers)}"
                )
            )
        for i, child in enumerate(spec.triggers):
            _check_trigger(child, f"{path}.{kind}.triggers[{i}]", out, shape, depth + 1)
    else:
        out.append(
            FieldViolation(path, "required: one of cron, interval, date, business_day, rrule, any_of, all_of")
        )


def _check_skip_fires(spec: TriggerSpec, path: str, zone: tzinfo, out: list[FieldViolation]) -> None:
    """Refuse a DST_POLICY_SKIP cron whose every time falls in a gap (`30 2 * 3 0L` in Europe/Berlin).

    Stops at the first: each such refusal costs a whole cron search budget.
    """
    if out:
        return
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
        return self.search(_utc(now), SearchBudget())

    def search(self, now: datetime, budget: SearchBudget) -> datetime | None:
        """The first fire time at or after `now`, paid for from `budget`."""
        found = self.next_after(now - _TICK, budget)
        return found[0] if found is not None else None

    def next_after(self, after: datetime, budget: SearchBudget | None = None) -> tuple[datetime, bool] | None:
        """The first fire time after `after` (UTC) and whether it was moved out of a gap; None: none.

        The cron's own search budget bounds it; with a shared `budget`, so does what is left of that.
        """
        if budget is not None:
            budget.charge(_CRON_STEPS)
        own = _SEARCH_BUDGET if budget is None else min(_SEARCH_BUDGET, budget.remaining())
        local = after.astimezone(self.zone)
        search: _Search | None = None
        try:
            if self.cron.wall_clock and not _fixed_offset(self.zone):
                search = _Search(self.cron.text, local, own)
                return next(search).astimezone(UTC), False
            wall = local.replace(tzinfo=None)
            if local.fold and _ambiguous(local):
                # The rest of the repeated wall times fired at their first occurrence.
                wall = _fold_end(local, self.zone) - timedelta(seconds=1)
            search = _Search(self.cron.text, wall, own)
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
            if own < _SEARCH_BUDGET:
                raise _Exhausted from None  # the tree's budget ran out, not the cron's own
            log.warning("cron %r found no fire time within %d search steps", self.cron.text, _SEARCH_BUDGET)
            return None
        finally:
            self.steps = search.steps if search is not None else 0
            if budget is not None:
                budget.used += min(self.steps, own)  # charged before: over `own`, it raised above

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
# Every trigger built here answers search(now, budget) with the first fire time
# at or after `now`, paying for the work from the search's shared budget, and
# get_next_fire_time(None, now) the same with a fresh budget. This module never
# passes a previous fire time: that would make IntervalTrigger children of an
# OrTrigger count from another child's tick.


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

    def search(self, now: datetime, budget: SearchBudget) -> datetime | None:
        budget.charge(1)
        return self.get_next_fire_time(None, now)


class _Date(DateTrigger):  # type: ignore[misc]
    """DateTrigger that reports nothing once `now` is past its date (APScheduler's returns it regardless)."""

    __slots__ = ()

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        run_date: datetime = self.run_date
        if previous_fire_time is not None or run_date < now:
            return None
        return run_date

    def search(self, now: datetime, budget: SearchBudget) -> datetime | None:
        budget.charge(1)
        return self.get_next_fire_time(None, now)


class _BusinessDay(BaseTrigger):  # type: ignore[misc]
    """The `day`-th business day of every month (negative: from its end) at a wall-clock time.

    A business day is a day whose wall-clock time `at` the calendar holds. Each day looked at
    costs a step of the search's budget; a search gives up after _BUSINESS_MONTHS months.
    """

    __slots__ = ("calendars", "spec", "zone")

    def __init__(self, spec: BusinessDaySpec, zone: tzinfo, calendars: Mapping[str, Calendar]) -> None:
        self.spec = spec
        self.zone = zone
        self.calendars = calendars

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        return self.search(_utc(now), SearchBudget())

    def search(self, now: datetime, budget: SearchBudget) -> datetime | None:
        """The first fire time at or after `now`."""
        if self.spec.from_date is not None:
            # Once: the count from the date, if it is not past.
            fire = self._counted(self._days_from(self.spec.from_date, _DATE_ROLL_DAYS), budget)
            return fire if fire is not None and fire >= now else None
        local = now.astimezone(self.zone)
        year, month = local.year, local.month
        if self.spec.from_day:
            # A count from a day of the month may cross into the next month (or the one before).
            month -= 2
            if month < 1:
                year, month = year - 1, month + 12
        for _ in range(_BUSINESS_MONTHS):
            fire = self.in_month(year, month, budget)
            if fire is not None and fire >= now:
                return fire
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
            if year > 9998:
                return None
        return None

    def in_month(self, year: int, month: int, budget: SearchBudget) -> datetime | None:
        """The month's fire time; None when it has too few business days."""
        return self._counted(self._days(year, month), budget)

    def _counted(self, days: list[date], budget: SearchBudget) -> datetime | None:
        """The `day`-th business day of `days` (in counting order) at the time of day; None when
        they hold too few."""
        spec = self.spec
        hour, minute = divmod(spec.at_minutes, 60)
        wanted = spec.day if spec.day > 0 else -spec.day
        found = 0
        for day in days:
            budget.charge(1)
            instant, _ = _instant(datetime(day.year, day.month, day.day, hour, minute), self.zone)
            if calendar_rules.holds(self.calendars, spec.calendar_id, instant) is not None:
                found += 1
                if found == wanted:
                    return instant
        return None

    def _days(self, year: int, month: int) -> list[date]:
        """The days the month's count walks, in counting order."""
        length = calendar.monthrange(year, month)[1]
        if not self.spec.from_day:
            days = [date(year, month, d) for d in range(1, length + 1)]
            return days if self.spec.day > 0 else days[::-1]
        return self._days_from(date(year, month, min(self.spec.from_day, length)), _ROLL_DAYS)

    def _days_from(self, start: date, count: int) -> list[date]:
        """`count` days from `start`, forward (backward for a negative `day`), within the years
        a date can have."""
        step = 1 if self.spec.day > 0 else -1
        first, last = date.min.toordinal(), date.max.toordinal()
        ordinals = (start.toordinal() + step * n for n in range(count))
        return [date.fromordinal(o) for o in ordinals if first <= o <= last]

    def __str__(self) -> str:
        once = f" from {self.spec.from_date}" if self.spec.from_date is not None else ""
        return f"business_day[{self.spec.day}{once} of {self.spec.calendar_id}, {self.zone}]"


# --- RFC 5545 recurrence rules -------------------------------------------------
#
# python-dateutil expands the rules. Every time in them is a wall-clock time in the schedule's
# zone (a time the clock repeats fires at its first occurrence, one it skips at the jump); a TZID
# or a UTC `Z` is refused rather than half honoured. dateutil walks a rule from its DTSTART one
# period (a day of FREQ=DAILY, a week of WEEKLY, ...) at a time, so a search here starts it at
# the period of the search (the rule re-anchored there, the same occurrences) and bounds it to as
# many periods as the search's budget has steps left: a rule that fires too rarely for its
# frequency (`FREQ=MINUTELY;BYMONTH=2`) spends the budget and is refused like a rare cron
# combination. A rule with COUNT is expanded once, within the same bound, into its dates.

MAX_RRULE_LENGTH = 4096
MAX_RRULE_COUNT = 1000
_RRULE_UTC_TIME = re.compile(r"\d{8}T\d{6}Z")


@dataclass(frozen=True)
class _Rule:
    """One RRULE (or EXRULE) as dateutil read it: its frequency, grid and BY-parts, all explicit
    (dateutil fills in those DTSTART implies), so that it can be started again at any period of
    its grid and name the same occurrences from there on."""

    freq: int
    interval: int
    wkst: int
    dtstart: datetime
    until: datetime | None
    count: int | None
    by: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, rule: rfc5545.rrule) -> _Rule:
        parts: dict[str, Any] = vars(rule)
        weekdays = [rfc5545.weekday(w) for w in parts["_byweekday"] or ()]
        weekdays += [rfc5545.weekday(w, n) for w, n in parts["_bynweekday"] or ()]
        monthdays = (*(parts["_bymonthday"] or ()), *(parts["_bynmonthday"] or ()))
        by = {
            "bysetpos": parts["_bysetpos"],
            "bymonth": parts["_bymonth"],
            "bymonthday": monthdays or None,
            "byyearday": parts["_byyearday"],
            "byeaster": parts["_byeaster"],
            "byweekno": parts["_byweekno"],
            "byweekday": tuple(weekdays) or None,
            "byhour": tuple(sorted(parts["_byhour"])) if parts["_byhour"] else None,
            "byminute": tuple(sorted(parts["_byminute"])) if parts["_byminute"] else None,
            "bysecond": tuple(sorted(parts["_bysecond"])) if parts["_bysecond"] else None,
        }
        return cls(
            freq=int(parts["_freq"]),
            interval=int(parts["_interval"]),
            wkst=int(parts["_wkst"]),
            dtstart=parts["_dtstart"],
            until=parts["_until"],
            count=parts["_count"],
            by=tuple(by.items()),
        )

    def rebuilt(self, dtstart: datetime, until: datetime | None, count: int | None = None) -> rfc5545.rrule:
        """The rule starting at `dtstart` (a period boundary on its grid) and ending at `until`."""
        if self.until is not None:
            until = self.until if until is None else min(until, self.until)
        freq: Any = self.freq  # an int of dateutil's, typed as a Literal in its stubs
        return rfc5545.rrule(
            freq,
            dtstart=dtstart,
            interval=self.interval,
            wkst=self.wkst,
            count=count,
            until=None if count else until,
            cache=False,
            **dict(self.by),
        )

    def shift(self, start: datetime, periods: int) -> datetime:
        """`start` moved `periods` periods of the rule's frequency on (capped at year 9999)."""
        try:
            if self.freq == rfc5545.YEARLY:
                return start.replace(year=min(start.year + periods, 9999))
            if self.freq == rfc5545.MONTHLY:
                months = start.month - 1 + periods
                return start.replace(year=min(start.year + months // 12, 9999), month=months % 12 + 1, day=1)
            return start + timedelta(seconds=_PERIOD_SECONDS[self.freq] * periods)
        except (OverflowError, ValueError):
            return datetime(9999, 12, 31)

    def period_start(self, at: datetime) -> datetime:
        """The start of the period on the rule's grid (every INTERVAL periods from DTSTART's) that
        holds `at`; DTSTART itself when `at` is before it."""
        start, step = self.dtstart, self.interval
        if at <= start:
            return start
        if self.freq == rfc5545.YEARLY:
            return datetime(start.year + (at.year - start.year) // step * step, 1, 1)
        if self.freq == rfc5545.MONTHLY:
            months = (at.year - start.year) * 12 + at.month - start.month
            first = start.month - 1 + months // step * step
            return datetime(start.year + first // 12, first % 12 + 1, 1)
        if self.freq == rfc5545.WEEKLY:
            monday = start.date() - timedelta(days=(start.weekday() - self.wkst) % 7)
            week = datetime.combine(monday, datetime.min.time())
            return week + timedelta(weeks=(at - week).days // 7 // step * step)
        if self.freq == rfc5545.DAILY:
            day = datetime.combine(start.date(), datetime.min.time())
            return day + timedelta(days=(at - day).days // step * step)
        unit = timedelta(seconds=_PERIOD_SECONDS[self.freq])
        base = start.replace(
            minute=0 if self.freq == rfc5545.HOURLY else start.minute, second=0, microsecond=0
        )
        return base + unit * ((at - base) // unit // step * step)


_PERIOD_SECONDS = {
    rfc5545.YEARLY: 366 * 86400,
    rfc5545.MONTHLY: 31 * 86400,
    rfc5545.WEEKLY: 7 * 86400,
    rfc5545.DAILY: 86400,
    rfc5545.HOURLY: 3600,
    rfc5545.MINUTELY: 60,
}


@dataclass(frozen=True)
class _ParsedRule:
    rules: tuple[_Rule, ...]
    exrules: tuple[_Rule, ...]
    rdates: tuple[datetime, ...]
    exdates: frozenset[datetime]


@functools.lru_cache(maxsize=1024)
def _parse_rrule(text: str) -> _ParsedRule:
    """The rule set of `text` (naive wall times); ValueError saying what is wrong."""
    if not text.strip():
        raise ValueError(
            "required: DTSTART and RRULE lines, e.g. DTSTART:20270101T090000 RRULE:FREQ=WEEKLY;BYDAY=MO"
        )
    if len(text) > MAX_RRULE_LENGTH:
        raise ValueError(f"must be at most {MAX_RRULE_LENGTH} characters")
    lines = [line.strip() for line in text.replace("\\n", "\n").splitlines() if line.strip()]
    if not any(line.upper().startswith("DTSTART") for line in lines):
        raise ValueError("needs a DTSTART line (e.g. DTSTART:20270101T090000): the rule counts from it")
    if "TZID=" in text.upper() or _RRULE_UTC_TIME.search(text.upper()):
        raise ValueError(
            "times are wall-clock times in the schedule's time_zone: leave out TZID and the UTC `Z`"
        )
    try:
        parsed: Any = rfc5545.rrulestr("\n".join(lines), forceset=True, ignoretz=True, cache=False)
    except (ValueError, TypeError, IndexError, KeyError) as e:
        raise ValueError(f"not an RFC 5545 recurrence dateutil can read: {e}") from None
    rules = [_Rule.of(r) for r in parsed._rrule]
    exrules = [_Rule.of(r) for r in parsed._exrule]
    rdates: list[datetime] = list(parsed._rdate)
    if not rules and not rdates:
        raise ValueError("needs an RRULE or RDATE line")
    kept: list[_Rule] = []
    for rule in rules:
        if rule.freq == rfc5545.SECONDLY:
            raise ValueError("FREQ=SECONDLY is not supported: use a cron expression with seconds")
        if rule.count:
            rdates += _expand_count(rule)
        else:
            kept.append(rule)
    if any(rule.freq == rfc5545.SECONDLY or rule.count for rule in exrules):
        raise ValueError("an EXRULE with FREQ=SECONDLY or COUNT is not supported; use EXDATE")
    return _ParsedRule(tuple(kept), tuple(exrules), tuple(sorted(rdates)), frozenset(parsed._exdate))


def _expand_count(rule: _Rule) -> list[datetime]:
    """The occurrences of a rule with COUNT, found within SEARCH_STEPS periods of its DTSTART."""
    assert rule.count is not None
    if rule.count > MAX_RRULE_COUNT:
        raise ValueError(f"COUNT is at most {MAX_RRULE_COUNT}")
    bounded = rule.rebuilt(rule.dtstart, None, count=rule.count)
    horizon = rule.shift(rule.dtstart, SEARCH_STEPS)
    found = list(bounded.between(rule.dtstart, horizon, inc=True))
    if len(found) < rule.count:
        raise ValueError(
            f"its COUNT={rule.count} occurrences do not all fall within {SEARCH_STEPS} "
            "periods of its frequency from DTSTART; use a coarser FREQ or fewer"
        )
    return found


class _RRule(BaseTrigger):  # type: ignore[misc]
    """An RFC 5545 recurrence, wall-clock times in `zone` (see above)."""

    __slots__ = ("parsed", "zone")

    def __init__(self, parsed: _ParsedRule, zone: tzinfo) -> None:
        self.parsed = parsed
        self.zone = zone

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        return self.search(_utc(now), SearchBudget())

    def search(self, now: datetime, budget: SearchBudget) -> datetime | None:
        """The first fire time at or after `now`."""
        # An hour of wall time back: a repeated hour's first occurrence may be before `now`'s.
        wall = now.astimezone(self.zone).replace(tzinfo=None) - timedelta(hours=1)
        while True:
            budget.charge(1)
            candidate = self._next_wall(wall, budget)
            if candidate is None:
                return None
            fire, _ = _instant(candidate, self.zone)
            if fire >= now:
                return fire
            wall = candidate + timedelta(seconds=1)

    def _next_wall(self, wall: datetime, budget: SearchBudget) -> datetime | None:
        """The first occurrence at or after naive wall time `wall`. Each rule is walked from the
        period of `wall` for at most as many periods as the budget has steps left; one that goes on
        beyond them without an occurrence spends the budget (TriggerTooExpensive)."""
        parsed = self.parsed
        periods = max(budget.remaining(), 1)
        found = [d for d in parsed.rdates if d >= wall and d not in parsed.exdates][:1]
        for rule in parsed.rules:
            start = rule.period_start(wall)
            end = rule.shift(start, periods)
            for walked, occurrence in enumerate(rule.rebuilt(start, end).xafter(wall, inc=True)):
                if occurrence not in parsed.exdates and not self._excluded(occurrence):
                    found.append(occurrence)
                    break
                if walked >= SEARCH_STEPS:  # excluded occurrences, one after another
                    budget.charge(periods + 1)
            else:
                if rule.until is None or end < rule.until:
                    budget.charge(periods + 1)
        if not found:
            return None
        best = min(found)
        budget.charge(min(periods, _periods_between(parsed, wall, best)))
        return best

    def _excluded(self, occurrence: datetime) -> bool:
        for rule in self.parsed.exrules:
            window = rule.rebuilt(rule.period_start(occurrence), occurrence + timedelta(seconds=1))
            if window.between(occurrence, occurrence, inc=True):
                return True
        return False

    def __str__(self) -> str:
        return f"rrule[{self.zone}]"


def _periods_between(parsed: _ParsedRule, start: datetime, end: datetime) -> int:
    """About how many periods of the finest rule lie between `start` and `end`."""
    if not parsed.rules:
        return 1
    unit = _PERIOD_SECONDS[max(r.freq for r in parsed.rules)]
    return int((end - start).total_seconds() // unit) + 1


class _Or(OrTrigger):  # type: ignore[misc]
    """OrTrigger comparing in UTC: datetimes sharing a tzinfo compare by wall time, wrong in a fold.

    `path` names it in the schedule (`trigger.any_of`) for a search that runs out of budget.
    """

    def __init__(self, triggers: list[BaseTrigger], path: str) -> None:
        super().__init__(triggers)
        self.path = path

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        return self.search(_utc(now), SearchBudget())

    def search(self, now: datetime, budget: SearchBudget) -> datetime | None:
        try:
            fires = [t.search(now, budget) for t in self.triggers]
        except _Exhausted as e:
            e.path = e.path or self.path
            raise
        found = [_utc(f) for f in fires if f is not None]
        return min(found) if found else None


class _And(AndTrigger):  # type: ignore[misc]
    """AndTrigger comparing in UTC, bounded by the search's budget.

    APScheduler's loops forever when its children never agree (two intervals
    out of phase), and nested ones multiply their loops; here every child's
    evaluation is paid from the one budget of the search, wherever it is nested.
    """

    def __init__(self, triggers: list[BaseTrigger], path: str) -> None:
        super().__init__(triggers)
        self.path = path

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        return self.search(_utc(now), SearchBudget())

    def search(self, now: datetime, budget: SearchBudget) -> datetime | None:
        rounds = 0
        try:
            while True:
                rounds += 1
                found: list[datetime] = []
                for t in self.triggers:
                    fire = t.search(now, budget)
                    if fire is None:
                        return None
                    found.append(_utc(fire))
                latest = max(found)
                if min(found) == latest:
                    return latest
                now = latest
        except _Exhausted as e:
            if rounds > 1 and not e.looping:
                e.path, e.looping = self.path, True
            e.path = e.path or self.path
            raise


class _Bounded(BaseTrigger):  # type: ignore[misc]
    """Applies the schedule's start and end times to any trigger (combinators have no bounds)."""

    __slots__ = ("end", "start", "trigger")

    def __init__(self, trigger: BaseTrigger, start: datetime | None, end: datetime | None) -> None:
        self.trigger = trigger
        self.start = start
        self.end = end

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        return self.search(_utc(now), SearchBudget())

    def search(self, now: datetime, budget: SearchBudget) -> datetime | None:
        if self.start is not None and now < self.start:
            now = self.start
        fire: datetime | None = self.trigger.search(now, budget)
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
    named = calendar_rules.trigger_references(schedule.trigger)
    days = _CalendarSet(schedule.calendars) if named else None
    return _cached_trigger(schedule.trigger, schedule.time_zone, start, end, base, days)


class _CalendarSet:
    """The calendars a trigger's business days are read from, hashable by what they hold, so
    that triggers built on the same calendars stay cached and a changed calendar builds anew."""

    __slots__ = ("_key", "calendars")

    def __init__(self, calendars: Mapping[str, Calendar]) -> None:
        self.calendars = dict(calendars)
        self._key = tuple(
            sorted(
                (
                    cid,
                    repr(dataclasses.replace(c, create_time=None, update_time=None, etag="", description="")),
                )
                for cid, c in calendars.items()
            )
        )

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _CalendarSet) and self._key == other._key


@functools.lru_cache(maxsize=4096)
def _cached_trigger(
    spec: TriggerSpec,
    zone_name: str,
    start: datetime | None,
    end: datetime | None,
    anchor: datetime | None,
    days: _CalendarSet | None = None,
) -> BaseTrigger:
    violations: list[FieldViolation] = []
    _check_trigger(spec, "trigger", violations, _Shape(limited=False))
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
    return _Bounded(_build(spec, zone, interval_anchor, "trigger", days), start, end)


def _build(
    spec: TriggerSpec, zone: tzinfo, anchor: datetime | None, path: str, days: _CalendarSet | None = None
) -> BaseTrigger:
    if isinstance(spec, BusinessDaySpec):
        return _BusinessDay(spec, zone, days.calendars if days is not None else {})
    if isinstance(spec, RRuleSpec):
        return _RRule(_parse_rrule(spec.rule), zone)
    if isinstance(spec, CronSpec):
        return _Cron(_parse_cron(spec.expression), zone, spec.dst_policy)
    if isinstance(spec, IntervalSpec):
        if anchor is None:
            raise ValueError("an interval trigger needs an anchor")
        return _Interval(spec.every, anchor, None, zone)
    if isinstance(spec, DateSpec):
        return _Date(run_date=_utc(spec.run_time), timezone=zone)
    kind = "any_of" if isinstance(spec, AnyOfSpec) else "all_of"
    children = [
        _build(child, zone, anchor, f"{path}.{kind}.triggers[{i}]", days)
        for i, child in enumerate(spec.triggers)
    ]
    return (
        _Or(children, f"{path}.any_of") if isinstance(spec, AnyOfSpec) else _And(children, f"{path}.all_of")
    )


def _has_interval(spec: TriggerSpec) -> bool:
    if isinstance(spec, IntervalSpec):
        return True
    if isinstance(spec, AnyOfSpec | AllOfSpec):
        return any(_has_interval(child) for child in spec.triggers)
    return False


# --- fire times ---------------------------------------------------------------


def _next_after(trigger: BaseTrigger, after: datetime, deadline: float | None = None) -> datetime | None:
    """One search, with a budget of its own: TriggerTooExpensive names the combination that spent it."""
    budget = SearchBudget(deadline=deadline)
    try:
        fire: datetime | None = trigger.search(after + _TICK, budget)
    except _Exhausted as e:
        raise TriggerTooExpensive.field(
            e.path or "trigger",
            f"found no fire time after {after.isoformat()} within {SEARCH_STEPS} search steps: "
            "its triggers agree too rarely, or never; simplify the combination",
        ) from None
    if fire is None:
        return None
    fire = _utc(fire)
    if fire <= after:  # would repeat a tick forever; no trigger built here does this
        raise RuntimeError(f"trigger {trigger} went backwards: {fire} after {after}")
    return fire


def next_fire_time(schedule: Schedule, after: datetime, anchor: datetime) -> datetime | None:
    """The first fire time strictly after `after`, in UTC; None when the schedule has ended.

    Raises TriggerTooExpensive when the search spends its budget (SEARCH_STEPS).
    """
    return _next_after_cached(build_trigger(schedule, anchor), _utc(after))


@functools.lru_cache(maxsize=4096)
def _next_after_cached(trigger: BaseTrigger, after: datetime) -> datetime | None:
    """`_next_after` without a deadline, remembered: the answer depends only on the (cached,
    stateless) trigger and `after`, and schedules that share a trigger fire together (a burst of
    them due at one tick searches once). An exception is not remembered: it is raised each time."""
    return _next_after(trigger, after)


def _iter_fire_times(
    schedule: Schedule, after: datetime, anchor: datetime, deadline: float | None = None
) -> Iterator[datetime]:
    trigger = build_trigger(schedule, anchor)
    fire: datetime | None = _utc(after)
    while fire is not None:
        fire = _next_after(trigger, fire, deadline)
        if fire is not None:
            yield fire


def fire_times(
    schedule: Schedule, after: datetime, count: int, anchor: datetime, *, deadline: float | None = None
) -> list[datetime]:
    """The next `count` fire times strictly after `after`, in UTC; fewer when the schedule ends.

    Each search has its own budget; SearchTimedOut once past `deadline` (time.monotonic()).
    """
    times: list[datetime] = []
    if count <= 0:
        return times
    for fire in _iter_fire_times(schedule, after, anchor, deadline):
        times.append(fire)
        if len(times) >= count:
            break
    return times


def fire_times_between(
    schedule: Schedule,
    start: datetime,
    end: datetime,
    anchor: datetime,
    limit: int,
    *,
    deadline: float | None = None,
) -> Iterator[datetime]:
    """The fire times in [start, end), in UTC and in order, at most `limit` of them."""
    if limit <= 0:
        return
    end = _utc(end)
    for n, fire in enumerate(_iter_fire_times(schedule, _utc(start) - _TICK, anchor, deadline), start=1):
        if fire >= end:
            return
        yield fire
        if n >= limit:
            return


def preview(
    schedule: Schedule, after: datetime, count: int, anchor: datetime, *, deadline: float | None = None
) -> list[PreviewTime]:
    """The next `count` fire times after `after`, each with its local time and DST flags.

    Raises TriggerTooExpensive when one search spends its budget, SearchTimedOut past `deadline`.
    """
    trigger = build_trigger(schedule, anchor)
    zone = _zone(schedule.time_zone)
    return [
        _describe(trigger, fire, zone, deadline)
        for fire in fire_times(schedule, after, count, anchor, deadline=deadline)
    ]


def describe_fire_time(
    schedule: Schedule, fire: datetime, anchor: datetime, *, deadline: float | None = None
) -> PreviewTime:
    """`fire`, a fire time of `schedule` (from `fire_times_between`, say), with its DST flags."""
    return _describe(build_trigger(schedule, anchor), _utc(fire), _zone(schedule.time_zone), deadline)


def _describe(trigger: BaseTrigger, fire: datetime, zone: tzinfo, deadline: float | None) -> PreviewTime:
    local = fire.astimezone(zone)
    # At most one cron search per leaf, with a generous budget: a tree's crons all
    # at their own limit fit, so describing never fails for lack of steps.
    budget = SearchBudget(MAX_TRIGGER_LEAVES * (_SEARCH_BUDGET + _CRON_STEPS), deadline)
    return PreviewTime(
        fire_time=fire,
        local_time=local,
        # A tick the trigger would not name when asked at that instant was
        # moved there: its wall time fell into a gap.
        in_dst_gap=not _names(trigger, fire, budget),
        in_dst_fold=_ambiguous(local) and _named_by_cron(trigger, fire, budget),
    )


def _names(trigger: BaseTrigger, fire: datetime, budget: SearchBudget) -> bool:
    """Whether `trigger` fires at exactly `fire` when asked from that instant."""
    if isinstance(trigger, _Bounded):
        return _names(trigger.trigger, fire, budget)
    if isinstance(trigger, _Or):
        return any(_names(t, fire, budget) for t in trigger.triggers)
    if isinstance(trigger, _And):
        return all(_names(t, fire, budget) for t in trigger.triggers)
    if isinstance(trigger, _Cron):
        found = trigger.next_after(fire - _TICK, budget)
        return found == (fire, False)
    return True  # intervals and dates are instants, never in a gap


def _named_by_cron(trigger: BaseTrigger, fire: datetime, budget: SearchBudget) -> bool:
    """Whether a wall-clock (cron) part of `trigger` names `fire`; folds matter only to those."""
    if isinstance(trigger, _Bounded):
        return _named_by_cron(trigger.trigger, fire, budget)
    if isinstance(trigger, _Or | _And):
        return any(_named_by_cron(t, fire, budget) for t in trigger.triggers)
    if isinstance(trigger, _Cron):
        return _names(trigger, fire, budget)
    return False
