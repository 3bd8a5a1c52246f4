"""Calendar arithmetic: what a calendar holds, which ticks a schedule's calendars exclude, the
next tick that runs, year views and the checks on a calendar's fields. Pure: no server, no
database."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from cronwire_server.core import calendars, triggers
from cronwire_server.core.errors import InvalidArgument
from cronwire_server.core.model import (
    BusinessDaySpec,
    Calendar,
    CronSpec,
    DateRange,
    IntervalSpec,
    PublicHolidays,
    Schedule,
    SkipReason,
    TimeRange,
    YearlyDate,
)
from cronwire_server.core.planning import ScheduleActivity, plan_ticks
from cronwire_server.core.schedules import next_run_time

BERLIN = ZoneInfo("Europe/Berlin")
WEEKDAYS = (1, 2, 3, 4, 5)

# Bavaria's public holidays of 2027 that fall on a weekday, written out by hand (Easter Sunday
# is 2027-03-28): New Year, Epiphany, Good Friday, Easter Monday, Ascension, Whit Monday, Corpus
# Christi, All Saints. May 1 is a Saturday, Assumption and German Unity Day Sundays, Christmas
# a weekend.
BAVARIAN_WEEKDAY_HOLIDAYS_2027 = {
    date(2027, 1, 1),
    date(2027, 1, 6),
    date(2027, 3, 26),
    date(2027, 3, 29),
    date(2027, 5, 6),
    date(2027, 5, 17),
    date(2027, 5, 27),
    date(2027, 11, 1),
}


def cal(calendar_id: str, **fields: object) -> Calendar:
    return Calendar(namespace="ns", id=calendar_id, **fields)  # type: ignore[arg-type]


def world(*items: Calendar) -> dict[str, Calendar]:
    return {c.id: c for c in items}


def business_days() -> dict[str, Calendar]:
    """`business-days` = weekdays minus `bavaria`'s public holidays, in Europe/Berlin."""
    return world(
        cal("weekdays", time_zone="Europe/Berlin", weekdays=WEEKDAYS),
        cal("bavaria", time_zone="Europe/Berlin", public_holidays=(PublicHolidays("DE", "BY"),)),
        cal(
            "business-days",
            time_zone="Europe/Berlin",
            include_calendars=("weekdays",),
            exclude_calendars=("bavaria",),
        ),
    )


def schedule(trigger: object, *, zone: str = "UTC", **fields: object) -> Schedule:
    values: dict[str, object] = {"namespace": "ns", "id": "s", "job_id": "j", "trigger": trigger}
    values["time_zone"] = zone
    values.update(fields)
    return Schedule(**values)  # type: ignore[arg-type]


def runs_and_exclusions(s: Schedule, after: datetime, count: int) -> list[tuple[datetime, str]]:
    anchor = after
    return [
        (t, e.calendar_id if (e := calendars.exclusion(s, t)) else "")
        for t in triggers.fire_times(s, after, count, anchor)
    ]


def test_berlin_weekdays_at_nine_minus_bavarian_holidays_run_on_exactly_the_business_days_of_2027() -> None:
    s = schedule(
        CronSpec("0 9 * * *"),
        zone="Europe/Berlin",
        only_on_calendars=("business-days",),
        calendars=business_days(),
    )
    start = datetime(2026, 12, 31, 12, tzinfo=UTC)
    ticks = runs_and_exclusions(s, start, 365)
    ran = [t.astimezone(BERLIN) for t, by in ticks if not by]
    expected = [
        date(2027, 1, 1) + timedelta(days=n)
        for n in range(365)
        if (date(2027, 1, 1) + timedelta(days=n)).isoweekday() <= 5
        and date(2027, 1, 1) + timedelta(days=n) not in BAVARIAN_WEEKDAY_HOLIDAYS_2027
    ]
    assert len(expected) == 261 - 8
    assert [t.date() for t in ran] == expected
    # 09:00 wall time in summer and in winter alike.
    assert {(t.hour, t.minute) for t in ran} == {(9, 0)}
    assert {t.utcoffset() for t in ran} == {timedelta(hours=1), timedelta(hours=2)}
    excluded = {t.astimezone(BERLIN).date(): by for t, by in ticks if by}
    assert set(excluded.values()) == {"business-days"}
    assert set(excluded) >= BAVARIAN_WEEKDAY_HOLIDAYS_2027


@pytest.mark.parametrize(
    ("year", "easter"),
    [
        (2026, date(2026, 4, 5)),
        (2027, date(2027, 3, 28)),
        (2028, date(2028, 4, 16)),
        (2029, date(2029, 4, 1)),
        (2030, date(2030, 4, 21)),
    ],
)
def test_easter_based_holidays_are_right_for_2026_to_2030(year: int, easter: date) -> None:
    german = world(cal("de", time_zone="Europe/Berlin", public_holidays=(PublicHolidays("DE"),)))
    days = {d.day: d.reason for d in calendars.year_days(german, "de", year)}
    # Good Friday, Easter Monday, Ascension, Whit Monday.
    for offset in (-2, 1, 39, 50):
        assert days[easter + timedelta(days=offset)].startswith("public holiday in DE: "), (year, offset)
    assert "Good Friday" in days[easter - timedelta(days=2)]
    assert "Easter Monday" in days[easter + timedelta(days=1)]
    assert easter - timedelta(days=3) not in days  # Maundy Thursday is not a holiday in Germany
    assert len(days) == 9  # the nine nationwide holidays; none of Bavaria's own


def test_a_berlin_calendar_excludes_whole_local_days_across_both_dst_changes() -> None:
    # The spring change day has 23 hours, the autumn one 25: every hourly tick of each is excluded.
    closed = cal(
        "closed",
        time_zone="Europe/Berlin",
        dates=(
            DateRange(date(2027, 3, 28), date(2027, 3, 28)),
            DateRange(date(2027, 10, 31), date(2027, 10, 31)),
        ),
    )
    s = schedule(
        IntervalSpec(timedelta(hours=1)),
        start_time=datetime(2027, 1, 1, tzinfo=UTC),
        exclude_calendars=("closed",),
        calendars=world(closed),
    )
    for day, hours in [(date(2027, 3, 28), 23), (date(2027, 10, 31), 25)]:
        begin = datetime.combine(day, datetime.min.time(), tzinfo=BERLIN).astimezone(UTC)
        ticks = runs_and_exclusions(s, begin - timedelta(hours=2), 30)
        excluded = [t for t, by in ticks if by]
        assert len(excluded) == hours
        assert excluded[0] == begin
        assert {t.astimezone(BERLIN).date() for t in excluded} == {day}
        # The ticks on either side are on the days before and after, and run.
        assert all(t.astimezone(BERLIN).date() != day for t, by in ticks if not by)


def test_time_ranges_exclude_only_those_wall_clock_times_of_the_calendars_days() -> None:
    lunch = cal(
        "lunch", time_zone="Europe/Berlin", weekdays=WEEKDAYS, time_ranges=(TimeRange(12 * 60, 13 * 60),)
    )
    s = schedule(
        CronSpec("*/30 11-13 * * *"),
        zone="Europe/Berlin",
        exclude_calendars=("lunch",),
        calendars=world(lunch),
    )
    ticks = runs_and_exclusions(s, datetime(2027, 6, 7, 8, tzinfo=UTC), 6)  # a Monday
    assert [(t.astimezone(BERLIN).strftime("%H:%M"), by) for t, by in ticks] == [
        ("11:00", ""),
        ("11:30", ""),
        ("12:00", "lunch"),
        ("12:30", "lunch"),
        ("13:00", ""),
        ("13:30", ""),
    ]
    reason = calendars.exclusion(s, ticks[2][0])
    assert reason is not None
    assert reason.reason == "2027-06-07: Monday, 12:00-13:00"


def test_yearly_dates_and_ranges_and_union_and_difference() -> None:
    w = world(
        cal("xmas", yearly_dates=(YearlyDate(12, 24), YearlyDate(2, 29))),
        cal("shutdown", dates=(DateRange(date(2027, 12, 20), date(2027, 12, 31)),)),
        cal("closed", include_calendars=("shutdown", "xmas"), exclude_calendars=("open-day",)),
        cal("open-day", dates=(DateRange(date(2027, 12, 22), date(2027, 12, 22)),)),
    )
    held = {d.day for d in calendars.year_days(w, "closed", 2027)}
    assert held == {date(2027, 12, d) for d in range(20, 32)} - {date(2027, 12, 22)}
    assert date(2028, 2, 29) in {d.day for d in calendars.year_days(w, "xmas", 2028)}
    assert {d.day for d in calendars.year_days(w, "xmas", 2027)} == {date(2027, 12, 24)}


def test_the_next_fire_time_steps_over_excluded_days_with_a_search_per_stretch() -> None:
    # Friday 2027-05-14 09:00; the weekend and Whit Monday are excluded: next run Tuesday.
    s = schedule(
        CronSpec("* * * * *"),
        zone="Europe/Berlin",
        only_on_calendars=("business-days",),
        calendars=business_days(),
        next_fire_time=datetime(2027, 5, 15, 7, tzinfo=UTC),  # Saturday 09:00 Berlin
    )
    found = next_run_time(s, datetime(2027, 1, 1, tzinfo=UTC))
    assert found == datetime(2027, 5, 17, 22, tzinfo=UTC)  # Tuesday 00:00 Berlin


def test_excluded_ticks_are_planned_as_skipped_with_reason_calendar_naming_the_calendar() -> None:
    t0 = datetime(2027, 5, 17, 7, tzinfo=UTC)  # Whit Monday, 09:00 Berlin
    s = schedule(
        IntervalSpec(timedelta(hours=24)),
        start_time=t0,
        next_fire_time=t0,
        exclude_calendars=("bavaria",),
        calendars=business_days(),
    )
    plan = plan_ticks(s, t0 + timedelta(seconds=1), ScheduleActivity(), anchor=t0, rng=random.Random(1))
    assert [(r.tick, r.skip_reason) for r in plan.runs] == [(t0, SkipReason.CALENDAR)]
    # Whit Monday, by the name the holidays package gives it.
    assert plan.runs[0].note.startswith("excluded by calendar bavaria: 2027-05-17: public holiday in DE-BY: ")
    assert plan.next_fire_time == t0 + timedelta(hours=24)
    # The next day runs.
    later = plan_ticks(
        s.__class__(**{**s.__dict__, "next_fire_time": plan.next_fire_time}),
        t0 + timedelta(hours=24, seconds=1),
        ScheduleActivity(),
        anchor=t0,
        rng=random.Random(1),
    )
    assert [r.skip_reason for r in later.runs] == [None]


def test_holidays_of_a_year_never_computed_appear_on_demand() -> None:
    calendars.public_holidays.cache_clear()
    us = world(cal("ny", time_zone="America/New_York", public_holidays=(PublicHolidays("US", "NY"),)))
    assert calendars.holds(us, "ny", datetime(2031, 7, 4, 16, tzinfo=UTC)) is not None
    assert calendars.public_holidays.cache_info().currsize == 1


def test_bad_fields_are_each_named() -> None:
    bad = cal(
        "bad",
        time_zone="Mars/Olympus",
        dates=(DateRange(date(2027, 2, 1), date(2027, 1, 1)),),
        yearly_dates=(YearlyDate(2, 30), YearlyDate(13, 1)),
        weekdays=(1, 1),
        public_holidays=(PublicHolidays("XX"), PublicHolidays("DE", "ZZ")),
        time_ranges=(TimeRange(600, 600),),
        include_calendars=("bad",),
    )
    with pytest.raises(InvalidArgument) as caught:
        calendars.validate_calendar(bad)
    assert [v.field for v in caught.value.violations] == [
        "time_zone",
        "dates[0].end_date",
        "yearly_dates[0].day",
        "yearly_dates[1].month",
        "weekdays[1]",
        "public_holidays[0].country",
        "public_holidays[1].subdivision",
        "time_ranges[0]",
        "include_calendars[0]",
    ]


def test_cycles_are_refused_naming_the_path_and_missing_calendars_the_field() -> None:
    stored = world(cal("a", include_calendars=("b",)), cal("b", exclude_calendars=("c",)), cal("c"))
    with pytest.raises(InvalidArgument) as caught:
        calendars.check_references(cal("c", include_calendars=("a",)), stored)
    assert caught.value.violations[0].field == "include_calendars[0]"
    assert caught.value.violations[0].description == "makes a cycle: c -> a -> b -> c"
    with pytest.raises(InvalidArgument) as missing:
        calendars.check_references(cal("d", exclude_calendars=("a", "nope")), stored)
    assert missing.value.violations[0].field == "exclude_calendars[1]"


# Business-day triggers

NEW_YORK = ZoneInfo("America/New_York")


def new_york_business_days() -> dict[str, Calendar]:
    return world(
        cal("weekdays", time_zone="America/New_York", weekdays=WEEKDAYS),
        cal("new-york", time_zone="America/New_York", public_holidays=(PublicHolidays("US", "NY"),)),
        cal(
            "business",
            time_zone="America/New_York",
            include_calendars=("weekdays",),
            exclude_calendars=("new-york",),
        ),
    )


def test_the_last_business_day_of_each_month_of_2027_in_new_york() -> None:
    s = schedule(
        BusinessDaySpec("business", -1, 17 * 60), zone="America/New_York", calendars=new_york_business_days()
    )
    fires = triggers.fire_times(s, datetime(2027, 1, 1, tzinfo=UTC), 12, datetime(2027, 1, 1, tzinfo=UTC))
    local = [f.astimezone(NEW_YORK) for f in fires]
    # By hand: month ends on a weekend step back to Friday; Memorial Day is Monday 31 May; New
    # Year's Day 2028 is a Saturday, observed on Friday 31 December 2027.
    assert [t.date() for t in local] == [
        date(2027, 1, 29), date(2027, 2, 26), date(2027, 3, 31), date(2027, 4, 30), date(2027, 5, 28),
        date(2027, 6, 30), date(2027, 7, 30), date(2027, 8, 31), date(2027, 9, 30), date(2027, 10, 29),
        date(2027, 11, 30), date(2027, 12, 30),
    ]  # fmt: skip
    assert {(t.hour, t.minute) for t in local} == {(17, 0)}


def test_the_nth_business_day_and_a_month_with_too_few() -> None:
    business = new_york_business_days()
    second = schedule(BusinessDaySpec("business", 2, 9 * 60), zone="America/New_York", calendars=business)
    fires = triggers.fire_times(second, datetime(2027, 1, 1, tzinfo=UTC), 2, datetime(2027, 1, 1, tzinfo=UTC))
    # January: Fri 1 is New Year's Day, so Mon 4 and Tue 5; February: Mon 1, Tue 2.
    assert [f.astimezone(NEW_YORK).date() for f in fires] == [date(2027, 1, 5), date(2027, 2, 2)]
    # Only the 1st of each month is a business day: the 2nd business day never comes, within
    # the search's bounded reach.
    firsts = world(cal("firsts", yearly_dates=tuple(YearlyDate(m, 1) for m in range(1, 13))))
    never = schedule(BusinessDaySpec("firsts", 2), calendars=firsts)
    assert (
        triggers.next_fire_time(never, datetime(2027, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
        is None
    )


def test_a_business_day_trigger_follows_its_calendar_when_it_changes() -> None:
    closed = cal("open", weekdays=WEEKDAYS, exclude_calendars=("closed",))
    first = schedule(BusinessDaySpec("open", 1), calendars=world(closed, cal("closed")))
    start = datetime(2027, 2, 15, tzinfo=UTC)
    assert triggers.next_fire_time(first, start, start) == datetime(2027, 3, 1, tzinfo=UTC)
    shut = cal("closed", dates=(DateRange(date(2027, 3, 1), date(2027, 3, 2)),))
    moved = schedule(BusinessDaySpec("open", 1), calendars=world(closed, shut))
    assert triggers.next_fire_time(moved, start, start) == datetime(2027, 3, 3, tzinfo=UTC)


def test_bad_business_day_fields_are_named() -> None:
    s = schedule(BusinessDaySpec("business", 0, 24 * 60))
    with pytest.raises(InvalidArgument) as caught:
        triggers.validate_schedule_timing(s)
    assert [v.field for v in caught.value.violations] == [
        "trigger.business_day.day",
        "trigger.business_day.time_of_day",
    ]


def test_the_15th_or_the_next_business_day_after_it_across_2027_in_bavaria() -> None:
    s = schedule(
        BusinessDaySpec("business-days", 1, 9 * 60, from_day=15),
        zone="Europe/Berlin",
        calendars=business_days(),
    )
    fires = triggers.fire_times(s, datetime(2027, 1, 1, tzinfo=UTC), 12, datetime(2027, 1, 1, tzinfo=UTC))
    days = [f.astimezone(BERLIN).date() for f in fires]
    # By hand: 15 May is a Saturday and Monday the 17th Whit Monday, so Tuesday the 18th; 15 August
    # is a Sunday (Assumption is no Bavaria-wide holiday in the package), so Monday the 16th.
    assert days == [date(2027, m, 15) for m in range(1, 5)] + [date(2027, 5, 18)] + [
        date(2027, m, 15) for m in range(6, 8)
    ] + [date(2027, 8, 16)] + [date(2027, m, 15) for m in range(9, 13)]


def test_the_1st_or_the_business_day_before_it_crosses_into_the_month_before() -> None:
    s = schedule(
        BusinessDaySpec("business-days", -1, 9 * 60, from_day=1),
        zone="Europe/Berlin",
        calendars=business_days(),
    )
    fires = triggers.fire_times(s, datetime(2026, 12, 1, tzinfo=UTC), 6, datetime(2026, 12, 1, tzinfo=UTC))
    # 1 January 2027 is New Year's Day: Thursday 31 December 2026; 1 May is a Saturday: Friday 30 April.
    assert [f.astimezone(BERLIN).date() for f in fires] == [
        date(2026, 12, 1), date(2026, 12, 31), date(2027, 2, 1), date(2027, 3, 1), date(2027, 4, 1),
        date(2027, 4, 30),
    ]  # fmt: skip


# The next business day from a date (once)


def test_a_one_off_date_on_a_holiday_moves_to_the_next_business_day_and_fires_once() -> None:
    # Whit Monday 17 May 2027 is a Bavarian holiday: the next business day is Tuesday the 18th.
    s = schedule(
        BusinessDaySpec("business-days", 1, 9 * 60, from_date=date(2027, 5, 17)),
        zone="Europe/Berlin",
        calendars=business_days(),
    )
    start = datetime(2027, 1, 1, tzinfo=UTC)
    assert triggers.fire_times(s, start, 5, start) == [datetime(2027, 5, 18, 7, 0, tzinfo=UTC)]
    # Asked from after its time, it names nothing: it fired.
    assert triggers.next_fire_time(s, datetime(2027, 5, 18, 7, 0, tzinfo=UTC), start) is None
    # A date that is a business day fires on that day; the first business day strictly after a
    # date is counted from the day after it: from Friday 14 May, Saturday 15 on, Tuesday the 18th.
    on_the_day = schedule(
        BusinessDaySpec("business-days", 1, 9 * 60, from_date=date(2027, 5, 14)),
        zone="Europe/Berlin",
        calendars=business_days(),
    )
    assert triggers.fire_times(on_the_day, start, 5, start) == [datetime(2027, 5, 14, 7, 0, tzinfo=UTC)]
    after = schedule(
        BusinessDaySpec("business-days", 1, 9 * 60, from_date=date(2027, 5, 15)),
        zone="Europe/Berlin",
        calendars=business_days(),
    )
    assert triggers.fire_times(after, start, 5, start) == [datetime(2027, 5, 18, 7, 0, tzinfo=UTC)]


def test_a_one_off_date_counts_backward_and_to_the_nth_business_day() -> None:
    business = new_york_business_days()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    # Saturday 1 January 2028 (New Year's Day, observed Friday 31 December 2027) or the business day
    # before it: Thursday 30 December 2027.
    before = schedule(
        BusinessDaySpec("business", -1, 17 * 60, from_date=date(2028, 1, 1)),
        zone="America/New_York",
        calendars=business,
    )
    (fire,) = triggers.fire_times(before, start, 3, start)
    assert fire.astimezone(NEW_YORK) == datetime(2027, 12, 30, 17, 0, tzinfo=NEW_YORK)
    # The third business day from Thursday 27 May 2027: Thu 27, Fri 28, (Memorial Day Mon 31), Tue 1 June.
    third = schedule(
        BusinessDaySpec("business", 3, 9 * 60, from_date=date(2027, 5, 27)),
        zone="America/New_York",
        calendars=business,
    )
    (fire,) = triggers.fire_times(third, start, 3, start)
    assert fire.astimezone(NEW_YORK).date() == date(2027, 6, 1)
    # A calendar with no business day within the count's reach (366 days): no fire time.
    empty = schedule(BusinessDaySpec("none", 1, from_date=date(2027, 1, 1)), calendars=world(cal("none")))
    assert triggers.next_fire_time(empty, start, start) is None


def test_from_date_and_from_day_together_are_refused_naming_the_field() -> None:
    s = schedule(BusinessDaySpec("business", 1, 0, from_day=15, from_date=date(2027, 5, 15)))
    with pytest.raises(InvalidArgument) as caught:
        triggers.validate_schedule_timing(s)
    assert [v.field for v in caught.value.violations] == ["trigger.business_day.from_date"]
