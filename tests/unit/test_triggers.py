"""Trigger arithmetic: Debian cron semantics (through cronsim), intervals, bounds, DST, search budgets."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cronwire_server.core import triggers
from cronwire_server.core.errors import InvalidArgument
from cronwire_server.core.model import (
    AllOfSpec,
    AnyOfSpec,
    CronSpec,
    DateSpec,
    DstPolicy,
    IntervalSpec,
    Schedule,
    TriggerSpec,
)
from cronwire_server.core.triggers import PreviewTime

BERLIN = ZoneInfo("Europe/Berlin")
ANCHOR = datetime(2027, 1, 1, tzinfo=UTC)


def schedule(trigger: TriggerSpec, time_zone: str = "UTC", **fields: Any) -> Schedule:
    return Schedule(namespace="ns", id="s", job_id="j", trigger=trigger, time_zone=time_zone, **fields)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def times(spec: TriggerSpec, after: datetime, count: int, **fields: Any) -> list[datetime]:
    return triggers.fire_times(schedule(spec, **fields), after, count, ANCHOR)


def violations(s: Schedule) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        triggers.validate_schedule_timing(s)
    return {v.field: v.description for v in caught.value.violations}


# --- cron ---------------------------------------------------------------------


def test_cron_five_fields() -> None:
    assert times(CronSpec("15 */6 * * *"), utc(2027, 1, 1), 3) == [
        utc(2027, 1, 1, 0, 15),
        utc(2027, 1, 1, 6, 15),
        utc(2027, 1, 1, 12, 15),
    ]


def test_cron_six_fields_has_seconds_first() -> None:
    assert times(CronSpec("*/20 30 9 * * *"), utc(2027, 1, 1), 4) == [
        utc(2027, 1, 1, 9, 30, 0),
        utc(2027, 1, 1, 9, 30, 20),
        utc(2027, 1, 1, 9, 30, 40),
        utc(2027, 1, 2, 9, 30, 0),
    ]


@pytest.mark.parametrize("sunday", ["0", "7", "sun", "SUN"])
def test_cron_day_of_week_uses_crontab_numbering(sunday: str) -> None:
    # 2027-01-03 is a Sunday; APScheduler's own numbering would make 0 a Monday.
    assert times(CronSpec(f"0 8 * * {sunday}"), utc(2027, 1, 1), 2) == [
        utc(2027, 1, 3, 8),
        utc(2027, 1, 10, 8),
    ]


def test_cron_day_of_week_ranges_and_steps_keep_crontab_numbering() -> None:
    weekdays = [t.weekday() for t in times(CronSpec("0 0 * * 1-5"), utc(2027, 1, 1), 10)]
    assert set(weekdays) == {0, 1, 2, 3, 4}  # Monday..Friday in Python's numbering
    weekend = [t.strftime("%a") for t in times(CronSpec("0 0 * * 6-7"), utc(2027, 1, 1), 4)]
    assert weekend == ["Sat", "Sun", "Sat", "Sun"]
    # */2 counts from Sunday, as in cron: Sun, Tue, Thu, Sat.
    stepped = {t.strftime("%a") for t in times(CronSpec("0 0 * * */2"), utc(2027, 1, 1), 8)}
    assert stepped == {"Sun", "Tue", "Thu", "Sat"}


def test_cron_with_both_day_fields_restricted_fires_on_either() -> None:
    # POSIX cron: the 13th of the month or any Friday.
    fired = times(CronSpec("0 0 13 * 5"), utc(2027, 1, 1), 4)
    assert fired == [utc(2027, 1, 8), utc(2027, 1, 13), utc(2027, 1, 15), utc(2027, 1, 22)]


def test_cron_in_a_time_zone() -> None:
    assert times(CronSpec("0 9 * * *"), utc(2027, 1, 1), 1, time_zone="America/New_York") == [
        utc(2027, 1, 1, 14)
    ]


def test_next_fire_time_is_strictly_after() -> None:
    s = schedule(CronSpec("0 * * * *"))
    assert triggers.next_fire_time(s, utc(2027, 1, 1, 5), ANCHOR) == utc(2027, 1, 1, 6)
    assert triggers.next_fire_time(s, utc(2027, 1, 1, 5, 0, 0) - timedelta(microseconds=1), ANCHOR) == utc(
        2027, 1, 1, 5
    )


def test_naive_times_are_read_as_utc() -> None:
    s = schedule(CronSpec("0 * * * *"))
    fired = triggers.next_fire_time(s, datetime(2027, 1, 1, 5), ANCHOR)
    assert fired == utc(2027, 1, 1, 6)
    assert fired is not None
    assert fired.tzinfo is UTC


# --- interval and date --------------------------------------------------------


def test_interval_counts_from_start_time() -> None:
    start = utc(2027, 1, 1, 0, 0, 7)
    fired = times(IntervalSpec(timedelta(minutes=10)), utc(2027, 1, 1, 1), 3, start_time=start)
    assert fired == [utc(2027, 1, 1, 1, 0, 7), utc(2027, 1, 1, 1, 10, 7), utc(2027, 1, 1, 1, 20, 7)]


def test_interval_without_start_counts_from_the_anchor_whatever_the_query_time() -> None:
    s = schedule(IntervalSpec(timedelta(minutes=7)))
    created = utc(2027, 1, 1, 0, 0, 5) + timedelta(microseconds=250_000)
    first = triggers.fire_times(s, utc(2027, 1, 1, 1), 2, created)
    # Restarting later and asking from another instant lands on the same grid.
    later = triggers.fire_times(s, utc(2027, 1, 1, 1, 3, 30), 1, created)
    assert first == [utc(2027, 1, 1, 1, 3, 5), utc(2027, 1, 1, 1, 10, 5)]
    assert later == [utc(2027, 1, 1, 1, 10, 5)]


def test_interval_ticks_are_exact_far_from_the_anchor() -> None:
    start = utc(2026, 4, 4, 15, 42, 29) + timedelta(microseconds=42_146)
    s = schedule(IntervalSpec(timedelta(milliseconds=1)), start_time=start)
    tick = utc(2027, 8, 12, 20, 12, 47) + timedelta(microseconds=415_146)
    # APScheduler 3.11's float timestamps put this tick a millisecond late.
    assert triggers.next_fire_time(s, tick - timedelta(microseconds=1), ANCHOR) == tick


def test_interval_is_not_shifted_by_dst() -> None:
    fired = times(IntervalSpec(timedelta(hours=1)), utc(2027, 3, 28, 0), 3, time_zone="Europe/Berlin")
    assert fired == [utc(2027, 3, 28, 1), utc(2027, 3, 28, 2), utc(2027, 3, 28, 3)]


def test_date_fires_once() -> None:
    when = utc(2027, 6, 1, 12)
    assert times(DateSpec(when), utc(2027, 1, 1), 5) == [when]
    assert times(DateSpec(when), when, 5) == []


# --- combinations and bounds ----------------------------------------------------


def test_any_of_merges_in_order_without_repeats() -> None:
    spec = AnyOfSpec((CronSpec("0 */2 * * *"), CronSpec("0 */3 * * *"), DateSpec(utc(2027, 1, 1, 5))))
    assert times(spec, utc(2027, 1, 1), 5) == [
        utc(2027, 1, 1, 2),
        utc(2027, 1, 1, 3),
        utc(2027, 1, 1, 4),
        utc(2027, 1, 1, 5),
        utc(2027, 1, 1, 6),
    ]


def test_any_of_counts_each_interval_from_its_anchor() -> None:
    spec = AnyOfSpec((IntervalSpec(timedelta(minutes=40)), CronSpec("30 * * * *")))
    fired = times(spec, utc(2027, 1, 1), 4, start_time=utc(2027, 1, 1))
    assert fired == [
        utc(2027, 1, 1, 0, 30),
        utc(2027, 1, 1, 0, 40),
        utc(2027, 1, 1, 1, 20),
        utc(2027, 1, 1, 1, 30),
    ]


def test_all_of_fires_where_every_trigger_agrees() -> None:
    # Every 7 minutes from midnight, but only on the hour: each 7 hours.
    spec = AllOfSpec((IntervalSpec(timedelta(minutes=7)), CronSpec("0 * * * *")))
    fired = times(spec, utc(2027, 1, 1), 3, start_time=utc(2027, 1, 1))
    assert fired == [utc(2027, 1, 1, 7), utc(2027, 1, 1, 14), utc(2027, 1, 1, 21)]


def test_all_of_that_never_agrees_is_refused_instead_of_hanging() -> None:
    # Even minutes from midnight against minute 1 of each hour: APScheduler's AndTrigger would loop forever.
    spec = AllOfSpec((IntervalSpec(timedelta(minutes=2)), CronSpec("1 * * * *")))
    with pytest.raises(triggers.TriggerTooExpensive) as caught:
        times(spec, utc(2027, 1, 1), 1, start_time=utc(2027, 1, 1))
    [violation] = caught.value.violations
    assert violation.field == "trigger.all_of"
    assert f"within {triggers.SEARCH_STEPS} search steps" in violation.description


def test_start_and_end_bound_every_kind() -> None:
    bounds = {"start_time": utc(2027, 1, 1, 2), "end_time": utc(2027, 1, 1, 4)}
    assert times(CronSpec("0 * * * *"), utc(2027, 1, 1), 9, **bounds) == [
        utc(2027, 1, 1, 2),
        utc(2027, 1, 1, 3),
        utc(2027, 1, 1, 4),
    ]
    assert times(IntervalSpec(timedelta(hours=1)), utc(2027, 1, 1), 9, **bounds) == [
        utc(2027, 1, 1, 2),
        utc(2027, 1, 1, 3),
        utc(2027, 1, 1, 4),
    ]
    assert times(DateSpec(utc(2027, 1, 1, 5)), utc(2027, 1, 1), 9, **bounds) == []
    combined = AnyOfSpec((CronSpec("0 * * * *"), CronSpec("30 * * * *")))
    assert times(combined, utc(2027, 1, 1), 9, **bounds) == [
        utc(2027, 1, 1, 2),
        utc(2027, 1, 1, 2, 30),
        utc(2027, 1, 1, 3),
        utc(2027, 1, 1, 3, 30),
        utc(2027, 1, 1, 4),
    ]


def test_fire_times_between_is_start_inclusive_end_exclusive_and_limited() -> None:
    s = schedule(CronSpec("0 * * * *"))
    between = list(triggers.fire_times_between(s, utc(2027, 1, 1, 1), utc(2027, 1, 1, 4), ANCHOR, 100))
    assert between == [utc(2027, 1, 1, 1), utc(2027, 1, 1, 2), utc(2027, 1, 1, 3)]
    limited = list(triggers.fire_times_between(s, utc(2027, 1, 1), utc(2028, 1, 1), ANCHOR, 2))
    assert limited == [utc(2027, 1, 1, 0), utc(2027, 1, 1, 1)]


def test_build_trigger_is_cached() -> None:
    a = schedule(CronSpec("5 4 * * *"), "Europe/Berlin")
    b = schedule(CronSpec("5 4 * * *"), "Europe/Berlin")
    assert triggers.build_trigger(a, ANCHOR) is triggers.build_trigger(b, ANCHOR)


# --- DST ----------------------------------------------------------------------


def test_berlin_weekday_nine_am_across_spring_forward() -> None:
    previewed = triggers.preview(
        schedule(CronSpec("0 9 * * 1-5"), "Europe/Berlin"), utc(2027, 3, 24), 5, ANCHOR
    )
    assert [p.fire_time for p in previewed] == [
        utc(2027, 3, 24, 8),  # Wed, CET (+01:00)
        utc(2027, 3, 25, 8),
        utc(2027, 3, 26, 8),
        utc(2027, 3, 29, 7),  # Mon after 2027-03-28, CEST (+02:00)
        utc(2027, 3, 30, 7),
    ]
    assert all(p.local_time.hour == 9 and p.local_time.minute == 0 for p in previewed)
    assert [p.local_time.isoformat() for p in previewed][2:4] == [
        "2027-03-26T09:00:00+01:00",
        "2027-03-29T09:00:00+02:00",
    ]
    assert not any(p.in_dst_gap or p.in_dst_fold for p in previewed)


def test_berlin_spring_forward_gap_moves_the_tick_to_the_jump_and_flags_it() -> None:
    # 02:30 does not exist on 2027-03-28 (02:00 -> 03:00): as in Debian cron, it runs at the jump.
    previewed = triggers.preview(
        schedule(CronSpec("30 2 * * *"), "Europe/Berlin"), utc(2027, 3, 27), 3, ANCHOR
    )
    assert previewed == [
        PreviewTime(utc(2027, 3, 27, 1, 30), datetime(2027, 3, 27, 2, 30, tzinfo=BERLIN), False, False),
        PreviewTime(utc(2027, 3, 28, 1, 0), datetime(2027, 3, 28, 3, 0, tzinfo=BERLIN), True, False),
        PreviewTime(utc(2027, 3, 29, 0, 30), datetime(2027, 3, 29, 2, 30, tzinfo=BERLIN), False, False),
    ]


def test_skip_policy_drops_the_tick_in_the_gap() -> None:
    previewed = triggers.preview(
        schedule(CronSpec("30 2 * * *", DstPolicy.SKIP), "Europe/Berlin"), utc(2027, 3, 27), 2, ANCHOR
    )
    assert [p.fire_time for p in previewed] == [utc(2027, 3, 27, 1, 30), utc(2027, 3, 29, 0, 30)]
    assert not any(p.in_dst_gap for p in previewed)


def test_hourly_cron_in_the_gap_is_not_flagged() -> None:
    # 03:30 CEST is a time `30 * * * *` names, whatever happened at 02:30.
    previewed = triggers.preview(
        schedule(CronSpec("30 * * * *"), "Europe/Berlin"), utc(2027, 3, 28), 3, ANCHOR
    )
    assert [p.local_time.isoformat() for p in previewed] == [
        "2027-03-28T01:30:00+01:00",
        "2027-03-28T03:30:00+02:00",
        "2027-03-28T04:30:00+02:00",
    ]
    assert not any(p.in_dst_gap for p in previewed)


def test_berlin_fall_back_fold_fires_once_and_is_flagged() -> None:
    # 02:30 happens twice on 2027-10-31 (CEST 00:30 UTC, then CET 01:30 UTC).
    previewed = triggers.preview(
        schedule(CronSpec("30 2 * * *"), "Europe/Berlin"), utc(2027, 10, 30), 3, ANCHOR
    )
    assert [(p.fire_time, p.in_dst_fold, p.in_dst_gap) for p in previewed] == [
        (utc(2027, 10, 30, 0, 30), False, False),
        (utc(2027, 10, 31, 0, 30), True, False),  # the first occurrence only
        (utc(2027, 11, 1, 1, 30), False, False),
    ]
    assert previewed[1].local_time.isoformat() == "2027-10-31T02:30:00+02:00"


def test_fold_second_occurrence_is_skipped_even_when_asked_from_inside_it() -> None:
    s = schedule(CronSpec("30 2 * * *"), "Europe/Berlin")
    assert triggers.next_fire_time(s, utc(2027, 10, 31, 0, 45), ANCHOR) == utc(2027, 11, 1, 1, 30)


def test_hourly_cron_fires_in_both_repeated_hours() -> None:
    previewed = triggers.preview(
        schedule(CronSpec("0 * * * *"), "Europe/Berlin"), utc(2027, 10, 30, 22, 30), 4, ANCHOR
    )
    assert [(p.local_time.isoformat(), p.in_dst_fold) for p in previewed] == [
        ("2027-10-31T01:00:00+02:00", False),
        ("2027-10-31T02:00:00+02:00", True),
        ("2027-10-31T02:00:00+01:00", True),
        ("2027-10-31T03:00:00+01:00", False),
    ]


def test_interval_and_date_ticks_are_never_flagged() -> None:
    spec = IntervalSpec(timedelta(minutes=30))
    previewed = triggers.preview(
        schedule(spec, "Europe/Berlin", start_time=utc(2027, 10, 31)), utc(2027, 10, 31), 4, ANCHOR
    )
    assert [p.local_time.isoformat() for p in previewed] == [
        "2027-10-31T02:30:00+02:00",
        "2027-10-31T02:00:00+01:00",  # a wall time of the fold, but an instant: not flagged
        "2027-10-31T02:30:00+01:00",
        "2027-10-31T03:00:00+01:00",
    ]
    assert not any(p.in_dst_fold or p.in_dst_gap for p in previewed)
    date = triggers.preview(
        schedule(DateSpec(utc(2027, 10, 31, 1)), "Europe/Berlin"), utc(2027, 1, 1), 1, ANCHOR
    )
    assert date == [
        PreviewTime(utc(2027, 10, 31, 1), datetime(2027, 10, 31, 2, tzinfo=BERLIN, fold=1), False, False)
    ]


def test_describe_fire_time_flags_a_backfilled_tick() -> None:
    s = schedule(CronSpec("30 2 * * *"), "Europe/Berlin")
    described = triggers.describe_fire_time(s, utc(2027, 3, 28, 1, 0), ANCHOR)
    assert described.in_dst_gap
    assert described.local_time.isoformat() == "2027-03-28T03:00:00+02:00"


# --- validation ---------------------------------------------------------------


def test_valid_schedule_passes() -> None:
    spec = AnyOfSpec((CronSpec("0 9 * * 1-5"), AllOfSpec((CronSpec("0 0 1 * *"), CronSpec("0 0 * * 1")))))
    triggers.validate_schedule_timing(
        schedule(
            spec, "Europe/Berlin", start_time=utc(2027, 1, 1), end_time=utc(2027, 1, 1), jitter=timedelta(0)
        )
    )


def test_bad_cron_says_what_is_wrong() -> None:
    found = violations(schedule(CronSpec("61 * * * *")))
    assert list(found) == ["trigger.cron.expression"]
    assert "minute" in found["trigger.cron.expression"]
    assert "61" in found["trigger.cron.expression"]


@pytest.mark.parametrize("expression", ["* * * *", "* * * * * * *"])
def test_cron_with_wrong_field_count(expression: str) -> None:
    found = violations(schedule(CronSpec(expression)))
    assert "expected 5 fields" in found["trigger.cron.expression"]
    assert f"got {len(expression.split())}" in found["trigger.cron.expression"]


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("", "required"),
        ("0 0 * * 8", "day-of-week: 8 is out of range 0-7"),
        ("0 0 * * fun", "day-of-week: unknown name 'FUN'; use SUN-SAT"),
        ("0 0 1 foo *", "month: unknown name 'FOO'; use JAN-DEC"),
        ("0 25 * * *", "hour: 25 is out of range 0-23"),
        ("0 0 30 2 *", "day-of-month: day 30 never occurs in FEB"),
        ("0 0 30,31 2 *", "day-of-month: days 30, 31 never occur in FEB"),
        ("0 0 */31 * MON#2", "day-of-month '*/31' and day-of-week 'MON#2' never fall on the same day"),
        ("*/0 * * * *", "minute: in '*/0' the step must be at least 1"),
        ("5-2 * * * *", "minute: in '5-2' the first value is after the last"),
        ("0 0 * * 1#6", "day-of-week: in '1#6' the week must be 1-5"),
        ("0 0 15W * *", "`W` (nearest weekday) is supported only as `LW`"),
        ("0 0 ? * *", "day-of-month: cannot read '?'"),
        ("@reboot", "unknown macro '@reboot'"),
        ("61 * 32 * *", "minute: 61 is out of range 0-59; day-of-month: 32 is out of range 1-31"),
    ],
)
def test_cron_expression_problems(expression: str, fragment: str) -> None:
    assert fragment in violations(schedule(CronSpec(expression)))["trigger.cron.expression"]


def test_unknown_time_zone() -> None:
    assert (
        "Mars/Olympus_Mons" in violations(schedule(CronSpec("0 * * * *"), "Mars/Olympus_Mons"))["time_zone"]
    )


def test_interval_must_be_positive() -> None:
    assert set(violations(schedule(IntervalSpec(timedelta(0))))) == {"trigger.interval.every"}
    assert set(violations(schedule(IntervalSpec(timedelta(seconds=-1))))) == {"trigger.interval.every"}


def test_end_before_start() -> None:
    s = schedule(CronSpec("0 * * * *"), start_time=utc(2027, 1, 2), end_time=utc(2027, 1, 1))
    assert set(violations(s)) == {"end_time"}


def test_negative_jitter_and_catchup_window() -> None:
    s = schedule(CronSpec("0 * * * *"), jitter=timedelta(seconds=-1), catchup_window=timedelta(seconds=-1))
    assert set(violations(s)) == {"jitter", "catchup_window"}


def test_every_violation_is_listed_with_nested_paths() -> None:
    spec = AnyOfSpec(
        (
            CronSpec("0 9 * * 1-5"),
            CronSpec("0 9 * *"),
            AllOfSpec((IntervalSpec(timedelta(0)),)),
        )
    )
    found = violations(
        schedule(spec, "Nowhere/Special", start_time=utc(2027, 1, 2), end_time=utc(2027, 1, 1))
    )
    assert set(found) == {
        "trigger.any_of.triggers[1].cron.expression",
        "trigger.any_of.triggers[2].all_of.triggers",
        "trigger.any_of.triggers[2].all_of.triggers[0].interval.every",
        "time_zone",
        "end_time",
    }


def test_combination_needs_two_triggers() -> None:
    assert "got 1" in violations(schedule(AnyOfSpec((CronSpec("0 * * * *"),))))["trigger.any_of.triggers"]
    assert "got 0" in violations(schedule(AllOfSpec(())))["trigger.all_of.triggers"]


def test_missing_trigger() -> None:
    assert set(violations(schedule(None))) == {"trigger"}  # type: ignore[arg-type]


def test_build_trigger_refuses_an_invalid_schedule() -> None:
    with pytest.raises(InvalidArgument) as caught:
        triggers.build_trigger(schedule(CronSpec("bad"), "Nowhere/Special"), ANCHOR)
    assert {v.field for v in caught.value.violations} == {"trigger.cron.expression", "time_zone"}


# --- the cases of the cron-semantics issue: each failed before cronsim ------------


NEW_YORK = ZoneInfo("America/New_York")


def local_dates(expression: str, zone: str, after: datetime, count: int) -> list[str]:
    fired = times(CronSpec(expression), after, count, time_zone=zone)
    return [t.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M") for t in fired]


def test_daily_midnight_keeps_the_day_after_the_spring_change() -> None:
    after = datetime(2027, 3, 28, tzinfo=BERLIN)  # 00:00, the night of the change
    assert local_dates("0 0 * * *", "Europe/Berlin", after, 2) == ["2027-03-29 00:00", "2027-03-30 00:00"]


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York"])
def test_monthly_keeps_the_first_of_the_month_after_the_spring_change(zone: str) -> None:
    after = datetime(2027, 3, 10, tzinfo=ZoneInfo(zone))  # before the change in both zones
    assert local_dates("0 0 1 * *", zone, after, 2) == ["2027-04-01 00:00", "2027-05-01 00:00"]


def test_weekly_keeps_the_monday_after_the_spring_change() -> None:
    after = datetime(2027, 3, 27, tzinfo=BERLIN)
    assert local_dates("0 0 * * 1", "Europe/Berlin", after, 1) == ["2027-03-29 00:00"]


def test_six_field_daily_keeps_the_day_after_the_spring_change_in_new_york() -> None:
    after = datetime(2027, 3, 13, 12, tzinfo=NEW_YORK)  # the change is on 03-14
    assert local_dates("0 0 0 * * *", "America/New_York", after, 3) == [
        "2027-03-14 00:00",
        "2027-03-15 00:00",
        "2027-03-16 00:00",
    ]


@pytest.mark.parametrize(
    ("expression", "months"),
    [
        ("0 0 1 JAN-JUN/2 *", [1, 3, 5, 1]),
        ("0 0 1 JAN-6 *", [1, 2, 3, 4]),
        ("0 0 1 jan/3 *", [1, 4, 7, 10]),
        ("0 0 1 8-DEC *", [8, 9, 10, 11]),
        ("0 0 1 5-jul *", [5, 6, 7, 5]),
        ("0 0 1 */12 *", [1, 1, 1, 1]),
    ],
)
def test_month_names_mix_with_numbers_ranges_and_steps(expression: str, months: list[int]) -> None:
    assert [t.month for t in times(CronSpec(expression), utc(2026, 12, 31), 4)] == months


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("*/60 * * * *", [utc(2027, 1, 1, 1), utc(2027, 1, 1, 2)]),
        ("0 */24 * * *", [utc(2027, 1, 2), utc(2027, 1, 3)]),
        ("0-5/10 * * * *", [utc(2027, 1, 1, 1), utc(2027, 1, 1, 2)]),
        ("5-5/1 * * * *", [utc(2027, 1, 1, 0, 5), utc(2027, 1, 1, 1, 5)]),  # Vixie: just 5
        ("0 0 */31 * *", [utc(2027, 2, 1), utc(2027, 3, 1)]),
    ],
)
def test_steps_wider_than_their_range(expression: str, expected: list[datetime]) -> None:
    assert times(CronSpec(expression), utc(2027, 1, 1), 2) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0 0 L * *", ["2027-01-31", "2027-02-28", "2027-03-31"]),
        ("0 0 LW * *", ["2027-01-29", "2027-02-26", "2027-03-31"]),  # Jan 31 is a Sunday
        ("0 0 last * *", ["2027-01-31", "2027-02-28", "2027-03-31"]),
        ("0 0 * * 5L", ["2027-01-29", "2027-02-26", "2027-03-26"]),
        ("0 0 * * 5#3", ["2027-01-15", "2027-02-19", "2027-03-19"]),
        ("0 0 * * FRI#2", ["2027-01-08", "2027-02-12", "2027-03-12"]),
        ("@monthly", ["2027-02-01", "2027-03-01", "2027-04-01"]),
        ("@weekly", ["2027-01-03", "2027-01-10", "2027-01-17"]),
        ("@yearly", ["2028-01-01", "2029-01-01", "2030-01-01"]),
        ("@annually", ["2028-01-01", "2029-01-01", "2030-01-01"]),
        ("@daily", ["2027-01-02", "2027-01-03", "2027-01-04"]),
        ("@midnight", ["2027-01-02", "2027-01-03", "2027-01-04"]),
    ],
)
def test_last_nth_and_macros(expression: str, expected: list[str]) -> None:
    assert [t.date().isoformat() for t in times(CronSpec(expression), utc(2027, 1, 1), 3)] == expected


def test_hourly_macro() -> None:
    assert times(CronSpec("@hourly"), utc(2027, 1, 1, 0, 30), 2) == [utc(2027, 1, 1, 1), utc(2027, 1, 1, 2)]


def test_fixed_time_in_the_gap_runs_at_the_jump_with_the_hours_around_it() -> None:
    after = datetime(2027, 3, 28, tzinfo=BERLIN)
    previewed = triggers.preview(schedule(CronSpec("30 0-4 * * *"), "Europe/Berlin"), after, 4, ANCHOR)
    assert [(p.local_time.strftime("%H:%M%z"), p.in_dst_gap) for p in previewed] == [
        ("00:30+0100", False),
        ("01:30+0100", False),
        ("03:00+0200", True),  # 02:30, run at the jump as in Debian cron
        ("03:30+0200", False),
    ]
    skip = triggers.preview(
        schedule(CronSpec("30 0-4 * * *", DstPolicy.SKIP), "Europe/Berlin"), after, 3, ANCHOR
    )
    assert [p.local_time.strftime("%H:%M") for p in skip] == ["00:30", "01:30", "03:30"]


@pytest.mark.parametrize("policy", list(DstPolicy))
def test_wildcard_minute_runs_in_both_repeated_hours(policy: DstPolicy) -> None:
    after = datetime(2027, 11, 7, tzinfo=NEW_YORK)  # 01:00-01:59 happens twice
    previewed = triggers.preview(
        schedule(CronSpec("*/15 1 * * *", policy), "America/New_York"), after, 9, ANCHOR
    )
    assert [p.local_time.strftime("%d %H:%M%z") for p in previewed] == [
        "07 01:00-0400",
        "07 01:15-0400",
        "07 01:30-0400",
        "07 01:45-0400",
        "07 01:00-0500",
        "07 01:15-0500",
        "07 01:30-0500",
        "07 01:45-0500",
        "08 01:00-0500",
    ]
    assert all(p.in_dst_fold for p in previewed[:8])


@pytest.mark.parametrize("policy", list(DstPolicy))
def test_wildcard_minute_in_the_gap_does_not_run(policy: DstPolicy) -> None:
    after = datetime(2027, 3, 28, 1, 58, tzinfo=BERLIN)
    fired = times(CronSpec("* 2 * * *", policy), after, 2, time_zone="Europe/Berlin")
    assert [t.astimezone(BERLIN).strftime("%m-%d %H:%M") for t in fired] == ["03-29 02:00", "03-29 02:01"]


def test_fold_asked_from_its_second_occurrence_with_seconds() -> None:
    # 6-field fixed times follow the same rule as 5-field ones: one run per repeated wall time.
    s = schedule(CronSpec("0 30 2 * * *"), "Europe/Berlin")
    assert triggers.next_fire_time(s, utc(2027, 10, 31, 0, 30), ANCHOR) == utc(2027, 11, 1, 1, 30)


def test_day_of_month_or_day_of_week_unless_one_starts_with_a_star() -> None:
    either = times(CronSpec("0 0 1 * MON"), utc(2027, 1, 1), 3)
    assert [t.date().isoformat() for t in either] == ["2027-01-04", "2027-01-11", "2027-01-18"]
    both = times(CronSpec("0 0 */2 * MON"), utc(2027, 1, 1), 2)  # odd days that are Mondays
    assert [t.date().isoformat() for t in both] == ["2027-01-11", "2027-01-25"]


# --- bounded search: steps, not seconds ----------------------------------------


def search_steps(expression: str, zone: str = "UTC", policy: DstPolicy = DstPolicy.DEBIAN) -> list[int]:
    """The steps each of the next 5 searches took (stopping early when the search finds nothing)."""
    cron = triggers._Cron(triggers._parse_cron(expression), ZoneInfo(zone), policy)
    steps: list[int] = []
    after = utc(2027, 1, 1)
    for _ in range(5):
        found = cron.next_after(after)
        steps.append(cron.steps)
        if found is None:
            break
        after = found[0]
    return steps


@pytest.mark.parametrize(
    "expression",
    [
        # Day-of-month never matches, day-of-week does: APScheduler searched to year 9999 (8-27 s).
        "35-52 * 31 FEB,APR,JUN MON-THU",
        "0 0 31 2 1",
        "0 0 30 2 MON#2",
    ],
)
def test_impossible_day_of_month_with_a_weekday_costs_few_steps(expression: str) -> None:
    assert max(search_steps(expression, "Europe/Berlin")) <= 100


@pytest.mark.parametrize(
    "expression",
    [
        "0 0 29 2 */7",  # 29 February on a Sunday: up to 40 years apart
        "0 0 * 2 MON#5",  # a fifth Monday in February: 28 years apart
        "0 0 */29 2 MON",
        "59 59 23 L 12 *",
    ],
)
def test_the_rarest_valid_shapes_stay_well_inside_the_budget(expression: str) -> None:
    steps = search_steps(expression)
    assert len(steps) == 5  # every search found its fire time
    assert max(steps) <= 1_500 < triggers._SEARCH_BUDGET


def test_a_shape_that_never_fires_stops_at_the_budget(caplog: pytest.LogCaptureFixture) -> None:
    # The last Sunday of March at 02:30 is always inside Berlin's gap; SKIP drops every one.
    steps = search_steps("30 2 * 3 0L", "Europe/Berlin", DstPolicy.SKIP)
    assert steps == [triggers._SEARCH_BUDGET + 1]
    assert "no fire time within" in caplog.text


def test_skip_policy_that_never_fires_is_refused() -> None:
    s = schedule(CronSpec("30 2 * 3 0L", DstPolicy.SKIP), "Europe/Berlin")
    assert "never fires in Europe/Berlin" in violations(s)["trigger.cron.dst_policy"]
    triggers.validate_schedule_timing(schedule(CronSpec("30 2 * 3 0L", DstPolicy.SKIP), "UTC"))
    triggers.validate_schedule_timing(schedule(CronSpec("30 2 * 3 0L"), "Europe/Berlin"))


@pytest.mark.parametrize("minute", [0, 15, 59])
def test_the_hour_after_a_fold_fires_when_asked_from_inside_the_fold(minute: int) -> None:
    # From inside the second 02:xx hour, the repeated times are done but 03:00 is not.
    s = schedule(CronSpec("0 3 * * *"), "Europe/Berlin")
    after = datetime(2027, 10, 31, 2, minute, 59, 999_999, tzinfo=BERLIN, fold=1)
    assert triggers.next_fire_time(s, after, ANCHOR) == utc(2027, 10, 31, 2)


# --- combinations: one budget per search, limits on shape -------------------------


def pair(a: str, b: str) -> AllOfSpec:
    """Midnight on weekday `a` and on weekday `b`: never both."""
    return AllOfSpec((CronSpec(f"0 0 * * {a}"), CronSpec(f"0 0 * * {b}")))


# Each never finds a fire time; nesting multiplied APScheduler's loops (the second ran for minutes).
NEVER: dict[str, tuple[TriggerSpec, str]] = {
    "pair": (pair("MON", "TUE"), "trigger.all_of"),
    "four pairs in any_of": (
        AnyOfSpec((pair("MON", "TUE"), pair("WED", "THU"), pair("FRI", "SAT"), pair("SUN", "MON"))),
        "trigger.any_of.triggers[0].all_of",
    ),
    "all_of of any_of with pairs": (
        AllOfSpec(
            (
                AnyOfSpec((CronSpec("0 0 * * MON"), pair("WED", "THU"))),
                AnyOfSpec((CronSpec("0 0 * * TUE"), pair("FRI", "SAT"))),
            )
        ),
        "trigger.all_of.triggers[0].any_of.triggers[1].all_of",
    ),
    "all_of in all_of, in and out of phase": (
        AllOfSpec(
            (IntervalSpec(timedelta(minutes=2)), AllOfSpec((CronSpec("1 * * * *"), pair("MON", "MON"))))
        ),
        "trigger.all_of.triggers[1].all_of",  # the one going round, not the pair inside it that agrees
    ),
}


@pytest.mark.parametrize("name", list(NEVER))
def test_a_search_spends_one_budget_however_the_combinations_nest(name: str) -> None:
    spec, blamed = NEVER[name]
    s = schedule(spec, start_time=utc(2027, 1, 1))
    budget = triggers.SearchBudget()
    with pytest.raises(triggers._Exhausted):
        triggers.build_trigger(s, ANCHOR).search(utc(2027, 1, 1), budget)
    # Over by at most one leaf's fixed cost: nested loops share the budget, never multiply it.
    assert triggers.SEARCH_STEPS < budget.used <= triggers.SEARCH_STEPS + triggers._CRON_STEPS
    with pytest.raises(triggers.TriggerTooExpensive) as caught:
        triggers.next_fire_time(s, utc(2027, 1, 1), ANCHOR)
    assert [v.field for v in caught.value.violations] == [blamed]


def search_costs(spec: TriggerSpec, count: int, **fields: Any) -> tuple[list[datetime], list[int]]:
    """The next `count` fire times from 2027 and the steps each search took."""
    trigger = triggers.build_trigger(schedule(spec, **fields), ANCHOR)
    fired: list[datetime] = []
    costs: list[int] = []
    after = utc(2027, 1, 1)
    for _ in range(count):
        budget = triggers.SearchBudget()
        after = trigger.search(after + timedelta(microseconds=1), budget)
        fired.append(after)
        costs.append(budget.used)
    return fired, costs


def test_combinations_that_agree_stay_well_inside_the_budget() -> None:
    monday_13th, costs = search_costs(AllOfSpec((CronSpec("0 0 13 * *"), CronSpec("0 0 * * MON"))), 3)
    assert [t.date().isoformat() for t in monday_13th] == ["2027-09-13", "2027-12-13", "2028-03-13"]
    assert max(costs) <= 1_000
    # Every 4001 s and every 4003 s from one start: together once each 185 days, in ~8,000 rounds.
    start = utc(2027, 1, 1)
    primes = AllOfSpec((IntervalSpec(timedelta(seconds=4001)), IntervalSpec(timedelta(seconds=4003))))
    together, costs = search_costs(primes, 2, start_time=start)
    assert together == [start + timedelta(seconds=4001 * 4003 * n) for n in (1, 2)]
    assert 10_000 < max(costs) < triggers.SEARCH_STEPS
    # An any_of evaluates each of its triggers once per search.
    weekdays = AnyOfSpec(tuple(CronSpec(f"0 {h} * * 1-5") for h in range(8)))
    _, costs = search_costs(weekdays, 10)
    assert max(costs) <= 500  # 8 crons, none looking more than a weekend ahead


def test_a_search_past_its_deadline_stops() -> None:
    s = schedule(pair("MON", "TUE"))
    with pytest.raises(triggers.SearchTimedOut):
        triggers.preview(s, utc(2027, 1, 1), 10, ANCHOR, deadline=time.monotonic() - 1)
    with pytest.raises(triggers.SearchTimedOut):
        triggers.fire_times(schedule(CronSpec("* * * * *")), utc(2027, 1, 1), 5, ANCHOR, deadline=0.0)


def nested(depth: int) -> TriggerSpec:
    """`depth` combinations inside one another, alternating any_of and all_of, two crons at the bottom."""
    spec: TriggerSpec = AnyOfSpec((CronSpec("0 0 * * *"), CronSpec("0 12 * * *")))
    for level in range(depth - 1):
        kind = AllOfSpec if level % 2 == 0 else AnyOfSpec
        spec = kind((spec, CronSpec("0 * * * *")))
    return spec


def test_combinations_nest_at_most_the_limit() -> None:
    triggers.validate_schedule_timing(schedule(nested(triggers.MAX_TRIGGER_DEPTH)))
    found = violations(schedule(nested(triggers.MAX_TRIGGER_DEPTH + 3)))
    # Named once, at the first combination too deep.
    assert list(found) == [  # the fifth from the top
        "trigger.any_of.triggers[0].all_of.triggers[0].any_of.triggers[0].all_of.triggers[0].any_of"
    ]
    assert f"at most {triggers.MAX_TRIGGER_DEPTH} deep" in next(iter(found.values()))


def test_a_trigger_holds_at_most_the_limit_of_leaves_nested_or_not() -> None:
    crons = tuple(CronSpec(f"{m} * * * *") for m in range(triggers.MAX_TRIGGER_LEAVES))
    triggers.validate_schedule_timing(schedule(AnyOfSpec(crons)))
    found = violations(schedule(AnyOfSpec((*crons, CronSpec("bad")))))
    assert list(found) == [f"trigger.any_of.triggers[{triggers.MAX_TRIGGER_LEAVES}]"]  # not parsed
    half = triggers.MAX_TRIGGER_LEAVES // 2
    split = AnyOfSpec((AnyOfSpec(crons[:half]), AllOfSpec((*crons[half:], IntervalSpec(timedelta(hours=1))))))
    assert list(violations(schedule(split))) == [f"trigger.any_of.triggers[1].all_of.triggers[{half}]"]


def test_a_stored_schedule_past_the_limits_still_computes() -> None:
    # Stored before the limits existed: the budget bounds its searches, so it keeps firing.
    deep = schedule(nested(triggers.MAX_TRIGGER_DEPTH + 1))
    assert triggers.next_fire_time(deep, utc(2027, 1, 1), ANCHOR) == utc(2027, 1, 1, 1)
