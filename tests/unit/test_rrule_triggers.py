"""RFC 5545 recurrence triggers: the occurrences python-dateutil names, found from any point of a
rule's life within the search budget, with EXDATE/RDATE/EXRULE, COUNT, daylight saving, and the
refusals naming the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from dateutil.rrule import rrulestr

from cronwire_server.core import triggers
from cronwire_server.core.errors import InvalidArgument
from cronwire_server.core.model import AllOfSpec, CronSpec, RRuleSpec, Schedule

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2027, 1, 1, tzinfo=UTC)


def schedule(rule: str, zone: str = "Europe/Berlin") -> Schedule:
    return Schedule(namespace="ns", id="s", job_id="j", trigger=RRuleSpec(rule), time_zone=zone)


def fires(rule: str, after: datetime = T0, count: int = 6, zone: str = "Europe/Berlin") -> list[str]:
    times = triggers.fire_times(schedule(rule, zone), after, count, T0)
    return [t.astimezone(ZoneInfo(zone)).isoformat() for t in times]


def test_weekly_with_exdate_and_rdate() -> None:
    rule = (
        "DTSTART:20200106T090000\nRRULE:FREQ=WEEKLY;BYDAY=MO,WE\n"
        "EXDATE:20270104T090000\nRDATE:20270102T120000"
    )
    assert fires(rule) == [
        "2027-01-02T12:00:00+01:00",  # the RDATE
        "2027-01-06T09:00:00+01:00",  # Monday the 4th is an EXDATE
        "2027-01-11T09:00:00+01:00",
        "2027-01-13T09:00:00+01:00",
        "2027-01-18T09:00:00+01:00",
        "2027-01-20T09:00:00+01:00",
    ]


@pytest.mark.parametrize(
    "rule",
    [
        "DTSTART:20190315T101500\nRRULE:FREQ=MONTHLY;INTERVAL=5;BYDAY=-1FR",
        "DTSTART:20180101T000000\nRRULE:FREQ=YEARLY;INTERVAL=3;BYMONTH=2,8;BYMONTHDAY=-1",
        "DTSTART:20210803T061700\nRRULE:FREQ=WEEKLY;INTERVAL=3;WKST=SU;BYDAY=SU,TU,SA",
        "DTSTART:20200229T120000\nRRULE:FREQ=DAILY;INTERVAL=11",
        "DTSTART:20240101T003000\nRRULE:FREQ=HOURLY;INTERVAL=7;BYMINUTE=5,35",
        "DTSTART:20260101T000300\nRRULE:FREQ=MINUTELY;INTERVAL=13",
        "DTSTART:20200131T170000\nRRULE:FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1",
        "DTSTART:20200101T090000\nRRULE:FREQ=YEARLY;BYWEEKNO=1,20;BYDAY=MO",
    ],
)
def test_years_after_dtstart_the_occurrences_are_dateutils_own(rule: str) -> None:
    # In UTC wall time is the instant: the trigger, re-anchored at the search's period, must
    # name exactly what dateutil names walking the rule from its DTSTART.
    expected = [
        d.replace(tzinfo=UTC) for d in rrulestr(rule, forceset=True).xafter(datetime(2027, 1, 1), count=12)
    ]
    assert triggers.fire_times(schedule(rule, "UTC"), T0 - timedelta(microseconds=1), 12, T0) == expected


def test_count_is_expanded_once_and_ends_the_trigger() -> None:
    rule = "DTSTART:20270328T023000\nRRULE:FREQ=DAILY;COUNT=3"
    # 02:30 does not exist on 28 March 2027 in Berlin: it fires at the jump, 03:00 CEST.
    assert fires(rule, datetime(2027, 3, 1, tzinfo=UTC)) == [
        "2027-03-28T03:00:00+02:00",
        "2027-03-29T02:30:00+02:00",
        "2027-03-30T02:30:00+02:00",
    ]


def test_a_repeated_wall_time_fires_once_at_its_first_occurrence() -> None:
    rule = "DTSTART:20271030T013000\nRRULE:FREQ=HOURLY;UNTIL=20271031T040000"
    assert fires(rule, datetime(2027, 10, 30, 22, tzinfo=UTC), 10) == [
        "2027-10-31T00:30:00+02:00",
        "2027-10-31T01:30:00+02:00",
        "2027-10-31T02:30:00+02:00",
        "2027-10-31T03:30:00+01:00",
    ]


def test_exrule_takes_occurrences_away() -> None:
    rule = (
        "DTSTART:20200101T090000\nRRULE:FREQ=YEARLY;BYMONTH=1;BYDAY=MO;BYSETPOS=1\n"
        "EXRULE:FREQ=YEARLY;BYMONTH=1;BYMONTHDAY=4"
    )
    assert [f[:10] for f in fires(rule, count=3)] == ["2028-01-03", "2029-01-01", "2030-01-07"]


def test_a_rule_too_rare_for_its_frequency_spends_the_budget_quickly() -> None:
    rare = schedule("DTSTART:20270101T000000\nRRULE:FREQ=MINUTELY;BYMONTH=2;BYMONTHDAY=29")
    started = datetime.now(UTC)
    with pytest.raises(triggers.TriggerTooExpensive):
        triggers.next_fire_time(rare, T0, T0)
    assert datetime.now(UTC) - started < timedelta(seconds=2)
    # The same dates daily are cheap: the next 29 February.
    daily = schedule("DTSTART:20270101T000000\nRRULE:FREQ=DAILY;BYMONTH=2;BYMONTHDAY=29")
    assert triggers.next_fire_time(daily, T0, T0) == datetime(2028, 2, 28, 23, tzinfo=UTC)


def test_it_combines_with_a_cron() -> None:
    both = Schedule(
        namespace="ns",
        id="s",
        job_id="j",
        trigger=AllOfSpec((RRuleSpec("DTSTART:20270101T090000\nRRULE:FREQ=DAILY"), CronSpec("0 9 * * MON"))),
        time_zone="Europe/Berlin",
    )
    first = triggers.next_fire_time(both, T0, T0)
    assert first is not None
    assert first.astimezone(BERLIN).isoformat() == "2027-01-04T09:00:00+01:00"


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ("", "required"),
        ("RRULE:FREQ=DAILY", "needs a DTSTART line"),
        ("DTSTART:20270101T090000Z\nRRULE:FREQ=DAILY", "leave out TZID"),
        ("DTSTART;TZID=Europe/Paris:20270101T090000\nRRULE:FREQ=DAILY", "leave out TZID"),
        ("DTSTART:20270101T090000\nRRULE:FREQ=SECONDLY", "FREQ=SECONDLY is not supported"),
        ("DTSTART:20270101T090000\nRRULE:FREQ=DAILY;BYDAY=XX", "invalid 'BYDAY'"),
        ("DTSTART:20270101T090000\nRRULE:FREQ=DAILY;COUNT=5000", "COUNT is at most 1000"),
        ("DTSTART:20270101T090000\nRRULE:FREQ=MINUTELY;BYMONTH=2;COUNT=3", "do not all fall within"),
    ],
)
def test_bad_rules_are_refused_naming_the_field(rule: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        triggers.validate_schedule_timing(schedule(rule))
    (violation,) = caught.value.violations
    assert violation.field == "trigger.rrule.rule"
    assert why in violation.description
