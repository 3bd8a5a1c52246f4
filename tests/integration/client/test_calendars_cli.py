"""Calendars from the SDK and the CLI, against a real server: a business-day schedule built from
the command line, previewed, and the same calendars through the client's dataclasses."""

from __future__ import annotations

from datetime import UTC, date, datetime

import cronwire
from cronwire import Calendar, DateRange, PublicHolidays, SkipReason, TimeRange, Weekday
from cronwire.cli import EXIT_ERROR
from tests.integration.client.test_cli import Run, cw  # noqa: F401  (the fixture)


def test_a_business_day_schedule_from_the_command_line(cw: Run) -> None:  # noqa: F811
    assert cw("calendars", "create", "weekdays", "--weekdays", "mon-fri", "--tz", "Europe/Berlin").code == 0
    assert cw("calendars", "create", "bavaria", "--holidays", "DE-BY", "--tz", "Europe/Berlin").code == 0
    created = cw(
        "calendars", "create", "business-days", "--include", "weekdays", "--exclude", "bavaria",
        "--tz", "Europe/Berlin", "-o", "json",
    )  # fmt: skip
    assert created.code == 0, created.err
    assert created.json()["exclude_calendars"] == ["namespaces/default/calendars/bavaria"]
    listed = cw("calendars", "list")
    assert [line.split()[0] for line in listed.out.splitlines()[1:]] == [
        "bavaria",
        "business-days",
        "weekdays",
    ]

    year = cw("calendars", "preview", "bavaria", "--year", "2027")
    assert year.code == 0, year.err
    assert "2027, Europe/Berlin" in year.out
    assert "12 days on the calendar (12 whole)" in year.out
    assert "2027-05-17 Mon  public holiday in DE-BY: " in year.out
    # Whit Monday is marked in May's grid (the week of the 17th).
    assert " 17*" in year.out

    assert cw("jobs", "create", "report", "--executor", "noop").code == 0
    made = cw(
        "schedules", "create", "report-9am", "--job", "report", "--cron", "0 9 * * *",
        "--tz", "Europe/Berlin", "--only-on-calendar", "business-days",
    )  # fmt: skip
    assert made.code == 0, made.err
    assert "only on calendars: namespaces/default/calendars/business-days" in made.out
    assert "exclude calendars" not in made.out  # shown only when set
    business_year = cw("calendars", "preview", "business-days", "--year", "2027")
    assert "253 days on the calendar (253 whole)" in business_year.out
    assert business_year.out.count("\n  2027-") == 0  # plain weekdays are not listed one by one
    preview = cw("schedules", "preview", "report-9am", "--after", "2027-05-14T12:00", "--count", "4")
    lines = preview.out.splitlines()[1:]
    assert [line.split()[1][:10] for line in lines] == [
        "2027-05-15",
        "2027-05-16",
        "2027-05-17",
        "2027-05-18",
    ]
    assert ["SKIPPED by calendar business-days" in line for line in lines] == [True, True, True, False]
    assert "taken away from it by calendar bavaria" in lines[2]

    # The last business day of each month, at 17:00 Berlin time.
    month_end = cw(
        "schedules", "create", "month-end", "--job", "report", "--business-day", "-1",
        "--calendar", "business-days", "--time-of-day", "17:00", "--tz", "Europe/Berlin", "-o", "json",
    )  # fmt: skip
    assert month_end.code == 0, month_end.err
    assert month_end.json()["trigger"] == {
        "business_day": {
            "calendar": "namespaces/default/calendars/business-days",
            "day": -1,
            "time_of_day": "17:00",
        }
    }
    ends = cw(
        "schedules", "preview", "month-end", "--after", "2027-01-01T00:00", "--count", "3", "-o", "json"
    )
    assert [t["local_time"] for t in ends.json()["fire_times"]] == [
        "2027-01-29T17:00:00+01:00", "2027-02-26T17:00:00+01:00", "2027-03-31T17:00:00+02:00",
    ]  # fmt: skip
    # The 15th of each month, or the next business day after it.
    mid = cw(
        "schedules", "preview", "--business-day", "1", "--from-day", "15", "--calendar", "business-days",
        "--time-of-day", "09:00", "--tz", "Europe/Berlin", "--after", "2027-05-01T00:00", "--count", "1",
        "-o", "json",
    )  # fmt: skip
    assert mid.code == 0, mid.err
    assert [t["local_time"] for t in mid.json()["fire_times"]] == ["2027-05-18T09:00:00+02:00"]
    # Once: Whit Monday 17 May 2027, or the next business day after it.
    once = cw(
        "schedules", "create", "once", "--job", "report", "--business-day", "1", "--from-date", "2027-05-17",
        "--calendar", "business-days", "--time-of-day", "09:00", "--tz", "Europe/Berlin", "-o", "json",
    )  # fmt: skip
    assert once.code == 0, once.err
    assert once.json()["trigger"]["business_day"]["from_date"] == "2027-05-17"
    assert once.json()["next_fire_time"] == "2027-05-18T07:00:00Z"
    once_preview = cw("schedules", "preview", "once", "--count", "3", "-o", "json")
    assert [t["local_time"] for t in once_preview.json()["fire_times"]] == ["2027-05-18T09:00:00+02:00"]
    both = cw(
        "schedules", "preview", "--business-day", "1", "--from-day", "15", "--from-date", "2027-05-17",
        "--calendar", "business-days",
    )  # fmt: skip
    assert both.code == 2
    assert "--from-day counts every month, --from-date once" in both.err
    assert cw("schedules", "create", "x", "--job", "report", "--business-day", "1").code == 2
    # An iCalendar rule, its lines joined by a literal \n on the command line.
    ical = cw(
        "schedules", "preview", "--rrule", "DTSTART:20270104T090000\\nRRULE:FREQ=WEEKLY;BYDAY=MO;INTERVAL=2",
        "--tz", "Europe/Berlin", "--after", "2027-01-01T00:00", "--count", "2", "-o", "json",
    )  # fmt: skip
    assert ical.code == 0, ical.err
    assert [t["local_time"] for t in ical.json()["fire_times"]] == [
        "2027-01-04T09:00:00+01:00", "2027-01-18T09:00:00+01:00",
    ]  # fmt: skip

    refused = cw("calendars", "delete", "bavaria")
    assert refused.code == EXIT_ERROR
    assert "CALENDAR_IN_USE" in refused.err
    bad = cw("calendars", "create", "bad", "--holidays", "XX", "--date", "2027-02-27..2027-02-01")
    assert bad.code == EXIT_ERROR
    assert "calendar.dates[0].end_date" in bad.err
    assert "calendar.public_holidays[0].country" in bad.err


def test_the_sdk_round_trips_calendars_and_schedules_name_them(client: cronwire.Client) -> None:
    lunch = client.create_calendar(
        "lunch",
        time_zone="Europe/Berlin",
        weekdays=[Weekday.MONDAY, Weekday.FRIDAY],
        time_ranges=[TimeRange("12:00", "13:30")],
        dates=[DateRange(date(2027, 12, 24), date(2027, 12, 31))],
        public_holidays=[PublicHolidays("US", "NY")],
    )
    assert client.get_calendar("lunch") == lunch
    assert lunch.weekdays == [Weekday.MONDAY, Weekday.FRIDAY]
    updated = client.update_calendar(lunch, description="lunch break", public_holidays=[])
    assert updated.description == "lunch break"
    assert updated.public_holidays == []
    assert updated.time_ranges == lunch.time_ranges
    assert [c.id for c in client.iter_calendars()] == ["lunch"]
    year = client.preview_calendar("lunch", year=2027)
    assert year.days[0].day == date(2027, 1, 1)  # a Friday
    assert year.days[0].time_ranges == [TimeRange("12:00", "13:30")]
    assert date(2027, 12, 25) in {d.day for d in year.days}  # the range holds the whole day
    unsaved = client.preview_calendar(Calendar(weekdays=[Weekday.SUNDAY]), year=2027)
    assert len(unsaved.days) == 52

    client.create_job("report", executor="noop")
    schedule = client.create_schedule(
        "report", job="report", trigger=cronwire.CronTrigger("*/30 11-13 * * 1"), time_zone="Europe/Berlin",
        exclude_calendars=["lunch"],
    )  # fmt: skip
    assert schedule.exclude_calendars == ["namespaces/test/calendars/lunch"]
    preview = client.preview_schedule(schedule, count=6, after_time=datetime(2027, 6, 6, tzinfo=UTC))
    excluded = [t.local_time.strftime("%H:%M") for t in preview.fire_times if t.excluded]
    assert excluded == ["12:00", "12:30", "13:00"]
    assert {t.excluded_by for t in preview.fire_times if t.excluded} == {"namespaces/test/calendars/lunch"}
    assert client.update_schedule(schedule, exclude_calendars=[]).exclude_calendars == []
    client.delete_calendar("lunch")
    assert SkipReason.CALENDAR.name == "CALENDAR"
