"""Cron fire times against two independent implementations, on expressions drawn from the grammar.

cronsim (Debian cron semantics, DST handling included) is compared in UTC and
three daylight-saving zones; croniter in UTC. Where a reference is known to be
wrong, or cronwire deliberately differs, the difference is explained below;
any other difference fails the test.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter  # type: ignore[import-untyped]
from cronsim import CronSim, CronSimError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cronwire_server.core import triggers
from cronwire_server.core.errors import InvalidArgument
from cronwire_server.core.model import CronSpec, DstPolicy, Schedule

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Australia/Sydney")
# The day before each 2027 change of the DST zones, and quiet days.
STARTS = (
    datetime(2027, 3, 27, 12, tzinfo=UTC),  # Berlin spring (03-28)
    datetime(2027, 10, 30, 12, tzinfo=UTC),  # Berlin autumn (10-31)
    datetime(2027, 3, 13, 12, tzinfo=UTC),  # New York spring (03-14)
    datetime(2027, 11, 6, 12, tzinfo=UTC),  # New York autumn (11-07)
    datetime(2027, 4, 3, 6, tzinfo=UTC),  # Sydney autumn (04-04)
    datetime(2027, 10, 2, 6, tzinfo=UTC),  # Sydney spring (10-03)
    datetime(2027, 1, 1, tzinfo=UTC),
    datetime(2028, 2, 27, 23, 59, 30, tzinfo=UTC),
)
COUNT = 12
ANCHOR = datetime(2027, 1, 1, tzinfo=UTC)
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")

# --- the grammar -----------------------------------------------------------------


def values(low: int, high: int, names: tuple[str, ...] = (), first_name: int = 0) -> st.SearchStrategy[str]:
    numbers = st.integers(low, high).map(str)
    if not names:
        return numbers
    named = st.sampled_from(names).map(lambda n: st.sampled_from([n, n.lower()])).flatmap(lambda s: s)
    return st.one_of(numbers, named)


def number_of(token: str, names: tuple[str, ...], first_name: int) -> int:
    return int(token) if token.isdigit() else names.index(token.upper()) + first_name


def items(low: int, high: int, names: tuple[str, ...] = (), first_name: int = 0) -> st.SearchStrategy[str]:
    value = values(low, high, names, first_name)
    step = st.integers(1, (high - low + 1) * 2).map(lambda n: f"/{n}")

    def ranged(pair: tuple[str, str]) -> str:
        a, b = sorted(pair, key=lambda t: number_of(t, names, first_name))
        return f"{a}-{b}"

    single_range = value.map(lambda v: f"{v}-{v}")
    return st.one_of(
        st.just("*"),
        step.map(lambda s: f"*{s}"),
        value,
        st.tuples(value, value).map(ranged),
        st.tuples(st.tuples(value, value).map(ranged), step).map("".join),
        st.tuples(value, step).map("".join),
        st.tuples(single_range, step).map("".join),
    )


def field(item: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.lists(item, min_size=1, max_size=3).map(",".join)


SECOND = field(items(0, 59))
MINUTE = field(items(0, 59))
HOUR = field(items(0, 23))
DAY = field(st.one_of(items(1, 31), st.sampled_from(["L", "LW"])))
MONTH = field(items(1, 12, MONTHS, 1))
WEEKDAY = field(
    st.one_of(
        items(0, 7, DAYS),
        st.tuples(values(0, 7, DAYS), st.integers(1, 5)).map(lambda t: f"{t[0]}#{t[1]}"),
        st.integers(0, 7).map(lambda d: f"{d}L"),
    )
)
# Fixed times (the DST rules differ from wildcards) as often as wildcard ones.
FIXED_MINUTE = st.integers(0, 59).map(str)
FIXED_HOUR = st.one_of(st.integers(0, 23).map(str), st.sampled_from(["2", "3", "1-3", "0-4"]))

five_fields = st.tuples(
    st.one_of(MINUTE, FIXED_MINUTE), st.one_of(HOUR, FIXED_HOUR), DAY, MONTH, WEEKDAY
).map(" ".join)
six_fields = st.tuples(SECOND, MINUTE, HOUR, DAY, MONTH, WEEKDAY).map(" ".join)
macros = st.sampled_from(["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"])
expressions = st.one_of(five_fields, five_fields, six_fields, macros)

# --- the implementations -------------------------------------------------------------

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def ours(expression: str, zone: str, after: datetime) -> list[datetime] | None:
    """cronwire's fire times; None when the expression is refused."""
    schedule = Schedule(namespace="n", id="s", job_id="j", trigger=CronSpec(expression), time_zone=zone)
    try:
        triggers.validate_schedule_timing(schedule)
    except InvalidArgument:
        return None
    return triggers.fire_times(schedule, after, COUNT, ANCHOR)


def by_cronsim(expression: str, zone: str, after: datetime) -> list[datetime] | None:
    """cronsim's; None when it refuses the expression."""
    try:
        it = CronSim(MACROS.get(expression, expression), after.astimezone(ZoneInfo(zone)))
    except CronSimError:
        return None
    return [t.astimezone(UTC) for t in islice(it, COUNT)]  # stops early when nothing fires in 50 years


def by_croniter(expression: str, after: datetime) -> list[datetime] | None:
    """croniter's, in UTC; it wants the seconds field last and spells the last Friday `L5`."""
    parts = expression.split()
    if len(parts) == 6:
        parts = [*parts[1:], parts[0]]
    parts[4] = re.sub(r"([0-9]+)L", r"L\1", parts[4])
    try:
        it = croniter(" ".join(parts), after, day_or=True)
        return [it.get_next(datetime).astimezone(UTC) for _ in range(COUNT)]
    except Exception:  # croniter has no error root; anything it raises is a refusal
        return None


# --- explained differences -----------------------------------------------------------------

RANGE = re.compile(r"([0-9A-Za-z]+)-([0-9A-Za-z]+)(/[0-9]+)?")
NO_NAMES: tuple[tuple[str, ...], int] = ((), 0)
FIELD_NAMES = (NO_NAMES, NO_NAMES, NO_NAMES, NO_NAMES, (MONTHS, 1), (DAYS, 0))


def _single_range(expression: str, *, step: bool) -> bool:
    """Whether some item is `a-a/n` (`0-SUN/2` too), or `a-a` with or without a step."""
    parts = MACROS.get(expression, expression).split()
    if len(parts) == 5:
        parts.insert(0, "0")
    for part, names in zip(parts, FIELD_NAMES, strict=True):
        for item in part.split(","):
            match = RANGE.fullmatch(item)
            if (
                match
                and (match[3] or not step)
                and number_of(match[1], *names) == number_of(match[2], *names)
            ):
                return True
    return False


def _is_fixed(expression: str) -> bool:
    parts = expression.split()
    if len(parts) == 5:
        parts.insert(0, "0")
    return len(parts) == 6 and not parts[1].startswith("*") and not parts[2].startswith("*")


def _near_dst_change(times: list[datetime], zone: str) -> bool:
    tz = ZoneInfo(zone)
    return any(
        (t - timedelta(hours=3)).astimezone(tz).utcoffset()
        != (t + timedelta(hours=3)).astimezone(tz).utcoffset()
        for t in times
    )


Explanation = Callable[[str, str, list[datetime] | None, list[datetime] | None], bool]

CRONSIM_DIFFERENCES: dict[str, Explanation] = {
    # Vixie cron reads `a-a/n` as the range a..a: just a. cronsim reads it as `a/n`, a..max.
    "cronsim reads `a-a/n` as `a/n`": lambda e, z, o, r: _single_range(e, step=True),
    # Debian's DST rules for fixed times (run a skipped time at the jump, a repeated one once)
    # apply to 6-field expressions too in cronwire; cronsim applies them to 5-field ones only.
    "cronsim has no Debian DST rules for 6 fields": lambda e, z, o, r: (
        len(e.split()) == 6 and _is_fixed(e) and z != "UTC" and _near_dst_change([*(o or []), *(r or [])], z)
    ),
}
CRONITER_DIFFERENCES: dict[str, Explanation] = {
    # And `1-1` in day-of-month as every day.
    "croniter misreads the range `a-a`": lambda e, z, o, r: _single_range(e, step=False),
    # `0,0#1` is every Sunday and `0 0 1 * 0#1` the 1st or the first Sunday; croniter
    # keeps only the first Sunday: beside `n#k` or `Ln` it drops the other day items.
    "croniter drops day items beside `n#k` or `Ln`": lambda e, z, o, r: (
        any(c in e.split()[-1] for c in "#L") and ("," in e.split()[-1] or e.split()[-3] != "*")
    ),
    # Debian reads day-of-week `a/n` as `a-7/n`, 7 being Sunday again; croniter stops at 6.
    "croniter ends day-of-week `a/n` on Saturday": lambda e, z, o, r: any(
        re.fullmatch(r"[0-9A-Za-z]+/[0-9]+", item) for item in e.split()[-1].split(",")
    ),
    "croniter has no `LW`": lambda e, z, o, r: r is None and "LW" in e.split()[-3],
    # Debian cron ORs the day fields when neither starts with `*` (`1,*` does not: OR;
    # `*/3` does: AND). croniter decides otherwise when a day field is more than a bare `*`.
    "croniter's OR of the day fields is not Debian's": lambda e, z, o, r: any(
        "*" in f and f != "*" for f in e.split()[-3:][::2]
    ),
}


def explain(
    expression: str,
    zone: str,
    mine: list[datetime] | None,
    theirs: list[datetime] | None,
    known: dict[str, Explanation],
) -> str | None:
    """None when the results agree; else the explanation, or a failure message when there is none."""
    if mine is None and not theirs:  # refused, or never fires: the same
        return None
    if mine == theirs:
        return None
    for reason, applies in known.items():
        if applies(expression, zone, mine, theirs):
            return reason
    pytest.fail(f"{expression!r} in {zone}: cronwire {_show(mine, zone)} != reference {_show(theirs, zone)}")


def _show(times: list[datetime] | None, zone: str) -> object:
    if times is None:
        return "refused"
    return [t.astimezone(ZoneInfo(zone)).isoformat() for t in times[:4]]


# --- the tests -----------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expression=expressions, zone=st.sampled_from(ZONES), after=st.sampled_from(STARTS))
def test_cronsim_agrees(expression: str, zone: str, after: datetime) -> None:
    explain(
        expression,
        zone,
        ours(expression, zone, after),
        by_cronsim(expression, zone, after),
        CRONSIM_DIFFERENCES,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expression=st.one_of(five_fields, six_fields), after=st.sampled_from(STARTS))
def test_croniter_agrees_in_utc(expression: str, after: datetime) -> None:
    explain(
        expression,
        "UTC",
        ours(expression, "UTC", after),
        by_croniter(expression, after),
        CRONITER_DIFFERENCES,
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expression=five_fields, zone=st.sampled_from(ZONES[1:]), after=st.sampled_from(STARTS))
def test_skip_policy_is_debian_without_the_ticks_moved_out_of_a_gap(
    expression: str, zone: str, after: datetime
) -> None:
    def preview(policy: DstPolicy) -> list[triggers.PreviewTime]:
        s = Schedule(namespace="n", id="s", job_id="j", trigger=CronSpec(expression, policy), time_zone=zone)
        return triggers.preview(s, after, COUNT, ANCHOR)

    try:
        debian = preview(DstPolicy.DEBIAN)
    except InvalidArgument:
        return
    kept = [p.fire_time for p in debian if not p.in_dst_gap]
    skip = [p.fire_time for p in preview(DstPolicy.SKIP)]
    assert skip[: len(kept)] == kept[: len(skip)]
