"""CalendarService, and schedules that skip or keep to calendars, over a real channel on SQLite and
PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format

from cronwire.v1 import (
    calendar_pb2,
    calendar_service_pb2,
    event_pb2,
    event_service_pb2,
    execution_pb2,
    execution_service_pb2,
    job_pb2,
    job_service_pb2,
    schedule_pb2,
    schedule_service_pb2,
)
from cronwire.v1.calendar_service_pb2_grpc import CalendarServiceStub
from cronwire.v1.event_service_pb2_grpc import EventServiceStub
from cronwire.v1.execution_service_pb2_grpc import ExecutionServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from cronwire_server.app import create_server
from cronwire_server.config import Settings
from tests.integration.api.test_job_service import expect_error
from tests.support import eventually

PARENT = "namespaces/ops"
JOB = f"{PARENT}/jobs/report"
BERLIN = ZoneInfo("Europe/Berlin")
# Bavaria's public holidays of 2027 on weekdays, by hand (see tests/unit/test_calendars.py).
WORKING_DAYS = [
    "WEEKDAY_MONDAY",
    "WEEKDAY_TUESDAY",
    "WEEKDAY_WEDNESDAY",
    "WEEKDAY_THURSDAY",
    "WEEKDAY_FRIDAY",
]
BAVARIAN_WEEKDAY_HOLIDAYS_2027 = {
    date(2027, m, d) for m, d in [(1, 1), (1, 6), (3, 26), (3, 29), (5, 6), (5, 17), (5, 27), (11, 1)]
}


@pytest.fixture
def calendars(channel: grpc.aio.Channel) -> CalendarServiceStub:
    return CalendarServiceStub(channel)


@pytest.fixture
async def job(jobs: JobServiceStub) -> job_pb2.Job:
    request = job_service_pb2.CreateJobRequest(
        parent=PARENT, job_id="report", job=job_pb2.Job(executor="noop")
    )
    return (await jobs.CreateJob(request)).job


def calendar(**fields: Any) -> calendar_pb2.Calendar:
    return json_format.ParseDict(fields, calendar_pb2.Calendar())


async def create_calendar(
    calendars: CalendarServiceStub, calendar_id: str, request_id: str = "", **fields: Any
) -> calendar_pb2.Calendar:
    request = calendar_service_pb2.CreateCalendarRequest(
        parent=PARENT, calendar_id=calendar_id, calendar=calendar(**fields), request_id=request_id
    )
    return (await calendars.CreateCalendar(request)).calendar


async def business_days(calendars: CalendarServiceStub) -> str:
    """`business-days`: weekdays in Europe/Berlin minus Bavaria's public holidays."""
    await create_calendar(
        calendars,
        "weekdays",
        timeZone="Europe/Berlin",
        weekdays=[
            "WEEKDAY_MONDAY",
            "WEEKDAY_TUESDAY",
            "WEEKDAY_WEDNESDAY",
            "WEEKDAY_THURSDAY",
            "WEEKDAY_FRIDAY",
        ],
    )
    await create_calendar(
        calendars,
        "bavaria",
        timeZone="Europe/Berlin",
        publicHolidays=[{"country": "DE", "subdivision": "BY"}],
    )
    created = await create_calendar(
        calendars,
        "business-days",
        timeZone="Europe/Berlin",
        includeCalendars=[f"{PARENT}/calendars/weekdays"],
        excludeCalendars=[f"{PARENT}/calendars/bavaria"],
    )
    return created.name


async def create_schedule(
    schedules: ScheduleServiceStub, schedule_id: str, **fields: Any
) -> schedule_pb2.Schedule:
    spec = json_format.ParseDict({"job": JOB, **fields}, schedule_pb2.Schedule())
    request = schedule_service_pb2.CreateScheduleRequest(
        parent=PARENT, schedule_id=schedule_id, schedule=spec
    )
    return (await schedules.CreateSchedule(request)).schedule


@pytest.mark.usefixtures("job")
async def test_calendars_have_the_aip_semantics_of_jobs(
    calendars: CalendarServiceStub, schedules: ScheduleServiceStub, events: EventServiceStub
) -> None:
    first = await create_calendar(calendars, "closed", request_id="r-1", dates=[{"startDate": "2027-12-24"}])
    again = await create_calendar(calendars, "closed", request_id="r-1", dates=[{"startDate": "2027-12-24"}])
    assert again == first
    assert first.etag
    assert first.HasField("create_time")
    await expect_error(create_calendar(calendars, "closed"), grpc.StatusCode.ALREADY_EXISTS)
    checked = await calendars.CreateCalendar(
        calendar_service_pb2.CreateCalendarRequest(
            parent=PARENT,
            calendar_id="dry",
            calendar=calendar(weekdays=["WEEKDAY_SUNDAY"]),
            validate_only=True,
        )
    )
    assert checked.calendar.name == f"{PARENT}/calendars/dry"
    await expect_error(
        calendars.GetCalendar(calendar_service_pb2.GetCalendarRequest(name=f"{PARENT}/calendars/dry")),
        grpc.StatusCode.NOT_FOUND,
    )
    for n in range(3):
        await create_calendar(calendars, f"extra-{n}", yearlyDates=[{"month": 5, "day": n + 1}])
    pages, token = [], ""
    while True:
        page = await calendars.ListCalendars(
            calendar_service_pb2.ListCalendarsRequest(parent=PARENT, page_size=3, page_token=token)
        )
        pages.append([c.name.rpartition("/")[2] for c in page.calendars])
        token = page.next_page_token
        if not token:
            break
    assert pages == [["closed", "extra-0", "extra-1"], ["extra-2"]]

    update = calendar_service_pb2.UpdateCalendarRequest(
        calendar=calendar(name=first.name, description="office closed", etag=first.etag),
        update_mask=field_mask_pb2.FieldMask(paths=["description"]),
    )
    updated = (await calendars.UpdateCalendar(update)).calendar
    assert updated.description == "office closed"
    assert updated.dates == first.dates
    assert updated.etag != first.etag
    await expect_error(calendars.UpdateCalendar(update), grpc.StatusCode.ABORTED)  # the stale etag

    await create_schedule(
        schedules, "nightly", trigger={"cron": {"expression": "0 3 * * *"}}, excludeCalendars=[first.name]
    )
    delete = calendar_service_pb2.DeleteCalendarRequest(name=first.name)
    _, reason = await expect_error(calendars.DeleteCalendar(delete), grpc.StatusCode.FAILED_PRECONDITION)
    assert reason == "CALENDAR_IN_USE"
    await schedules.DeleteSchedule(
        schedule_service_pb2.DeleteScheduleRequest(name=f"{PARENT}/schedules/nightly")
    )
    await calendars.DeleteCalendar(delete)
    # Each change is an event on the namespace's stream, in the order of the changes.
    types = [event_pb2.EVENT_TYPE_CALENDAR_CREATED, event_pb2.EVENT_TYPE_CALENDAR_UPDATED]
    types.append(event_pb2.EVENT_TYPE_CALENDAR_DELETED)

    async def calendar_events() -> list[tuple[int, str]] | None:
        listed = await events.ListEvents(
            event_service_pb2.ListEventsRequest(parent=PARENT, event_types=types)
        )
        found = [(e.type, e.resource) for e in listed.events if e.resource == first.name]
        return found if len(found) == 3 else None

    assert await eventually(calendar_events, 10, "the calendar's three events") == [
        (event_pb2.EVENT_TYPE_CALENDAR_CREATED, first.name),
        (event_pb2.EVENT_TYPE_CALENDAR_UPDATED, first.name),
        (event_pb2.EVENT_TYPE_CALENDAR_DELETED, first.name),
    ]
    await expect_error(
        calendars.GetCalendar(calendar_service_pb2.GetCalendarRequest(name=first.name)),
        grpc.StatusCode.NOT_FOUND,
    )


@pytest.mark.usefixtures("job")
async def test_bad_input_is_refused_naming_each_field_and_nothing_is_stored(
    calendars: CalendarServiceStub, schedules: ScheduleServiceStub
) -> None:
    violations, _ = await expect_error(
        create_calendar(
            calendars,
            "bad",
            timeZone="Europe/Nowhere",
            dates=[{"startDate": "2027-02-30"}],
            publicHolidays=[{"country": "DE", "subdivision": "XX"}],
            timeRanges=[{"startTime": "9:00", "endTime": "25:00"}],
            includeCalendars=[f"{PARENT}/calendars/missing"],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(violations) == {"calendar.dates[0].start_date", "calendar.time_ranges[0].end_time"}
    violations, _ = await expect_error(
        create_calendar(
            calendars,
            "bad",
            timeZone="Europe/Nowhere",
            publicHolidays=[{"country": "DE", "subdivision": "XX"}],
            includeCalendars=[f"{PARENT}/calendars/missing"],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(violations) == {"calendar.time_zone", "calendar.public_holidays[0].subdivision"}
    violations, _ = await expect_error(
        create_calendar(calendars, "bad", includeCalendars=[f"{PARENT}/calendars/missing"]),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations == {"calendar.include_calendars[0]": "calendar 'missing' does not exist"}
    listed = await calendars.ListCalendars(calendar_service_pb2.ListCalendarsRequest(parent=PARENT))
    assert list(listed.calendars) == []

    # A cycle, closed by an update, names its path; the calendar stays as it was.
    a = await create_calendar(calendars, "a", weekdays=["WEEKDAY_MONDAY"])
    await create_calendar(calendars, "b", includeCalendars=[a.name])
    violations, _ = await expect_error(
        calendars.UpdateCalendar(
            calendar_service_pb2.UpdateCalendarRequest(
                calendar=calendar(name=a.name, excludeCalendars=[f"{PARENT}/calendars/b"])
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations == {"calendar.exclude_calendars[0]": "makes a cycle: a -> b -> a"}
    got = (await calendars.GetCalendar(calendar_service_pb2.GetCalendarRequest(name=a.name))).calendar
    assert got == a

    violations, _ = await expect_error(
        create_schedule(
            schedules,
            "s",
            trigger={"cron": {"expression": "0 9 * * *"}},
            excludeCalendars=[a.name],
            onlyOnCalendars=[f"{PARENT}/calendars/nope", "namespaces/other/calendars/x"],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(violations) == {"schedule.only_on_calendars[1]"}
    violations, _ = await expect_error(
        create_schedule(
            schedules,
            "s",
            trigger={"cron": {"expression": "0 9 * * *"}},
            onlyOnCalendars=[f"{PARENT}/calendars/nope"],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations == {"schedule.only_on_calendars[0]": "calendar 'nope' does not exist"}
    listed_schedules = await schedules.ListSchedules(schedule_service_pb2.ListSchedulesRequest(parent=PARENT))
    assert list(listed_schedules.schedules) == []


@pytest.mark.usefixtures("job")
async def test_preview_shows_berlin_weekdays_at_nine_minus_bavarian_holidays_across_2027(
    calendars: CalendarServiceStub, schedules: ScheduleServiceStub
) -> None:
    business = await business_days(calendars)
    stored = await create_schedule(
        schedules,
        "weekday-9am",
        trigger={"cron": {"expression": "0 9 * * *"}},
        timeZone="Europe/Berlin",
        onlyOnCalendars=[business],
    )
    request = schedule_service_pb2.PreviewScheduleRequest(name=stored.name, count=365)
    request.after_time.FromDatetime(datetime(2026, 12, 31, 12, tzinfo=UTC))
    preview = await schedules.PreviewSchedule(request)
    assert len(preview.fire_times) == 365
    ran = [date.fromisoformat(t.local_time[:10]) for t in preview.fire_times if not t.excluded]
    days = [date(2027, 1, 1) + timedelta(days=n) for n in range(365)]
    expected = [d for d in days if d.isoweekday() <= 5 and d not in BAVARIAN_WEEKDAY_HOLIDAYS_2027]
    assert ran == expected
    assert len(ran) == 253
    assert {t.local_time[11:] for t in preview.fire_times} == {"09:00:00+01:00", "09:00:00+02:00"}
    whit_monday = next(t for t in preview.fire_times if t.local_time.startswith("2027-05-17"))
    assert whit_monday.excluded
    assert whit_monday.excluded_by == business
    assert "taken away from it by calendar bavaria" in whit_monday.exclusion_reason
    # An unsaved spec previews the same, the calendars read from its job's namespace.
    unsaved = schedule_service_pb2.PreviewScheduleRequest(schedule=stored, count=365)
    unsaved.after_time.CopyFrom(request.after_time)
    assert (await schedules.PreviewSchedule(unsaved)).fire_times == preview.fire_times
    # The calendar's own year view holds the same days.
    year = await calendars.PreviewCalendar(
        calendar_service_pb2.PreviewCalendarRequest(name=business, year=2027)
    )
    assert [date.fromisoformat(d.date) for d in year.days] == expected
    assert all(not d.time_ranges for d in year.days)


@pytest.mark.usefixtures("job")
async def test_excluded_ticks_become_skipped_records_and_a_calendar_change_replans_its_schedules(
    calendars: CalendarServiceStub, schedules: ScheduleServiceStub, executions: ExecutionServiceStub
) -> None:
    # Every day, in UTC: each tick of a per-second schedule is excluded until the calendar changes.
    every_day = await create_calendar(
        calendars,
        "every-day",
        weekdays=[
            f"WEEKDAY_{d}"
            for d in ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")
        ],
    )
    ticking = await create_schedule(
        schedules,
        "ticking",
        trigger={"cron": {"expression": "* * * * * *"}},
        excludeCalendars=[every_day.name],
    )
    assert not ticking.HasField("next_fire_time")  # no tick runs within the search's reach

    async def listed(state: int) -> list[execution_pb2.Execution]:
        page = await executions.ListExecutions(
            execution_service_pb2.ListExecutionsRequest(parent=PARENT, schedule=ticking.name, page_size=100)
        )
        return [e for e in page.executions if e.state == state]

    skipped = await eventually(
        lambda: _at_least(listed(execution_pb2.EXECUTION_STATE_SKIPPED), 2),
        10,
        "two ticks skipped by the calendar",
    )
    assert {e.skip_reason for e in skipped} == {execution_pb2.SKIP_REASON_CALENDAR}
    assert all(e.error.startswith("excluded by calendar every-day: ") for e in skipped)
    got = (await schedules.GetSchedule(schedule_service_pb2.GetScheduleRequest(name=ticking.name))).schedule
    assert got.stats.total >= 2
    assert got.stats.succeeded == 0

    # A daily 09:00 Berlin schedule whose next days a second calendar excludes: taking days out of
    # that calendar brings the schedule's next fire time forward, read back from the database.
    today = datetime.now(BERLIN).date()
    closed = await create_calendar(
        calendars,
        "closed",
        timeZone="Europe/Berlin",
        dates=[{"startDate": today.isoformat(), "endDate": (today + timedelta(days=5)).isoformat()}],
    )
    daily = await create_schedule(
        schedules,
        "daily",
        trigger={"cron": {"expression": "0 9 * * *"}},
        timeZone="Europe/Berlin",
        excludeCalendars=[closed.name],
    )
    first = daily.next_fire_time.ToDatetime(tzinfo=UTC).astimezone(BERLIN)
    assert (first.date(), first.hour) == (today + timedelta(days=6), 9)
    await calendars.UpdateCalendar(
        calendar_service_pb2.UpdateCalendarRequest(
            calendar=calendar(
                name=closed.name, dates=[{"startDate": (today - timedelta(days=1)).isoformat()}]
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["dates"]),
        )
    )
    replanned = (
        await schedules.GetSchedule(schedule_service_pb2.GetScheduleRequest(name=daily.name))
    ).schedule
    nxt = replanned.next_fire_time.ToDatetime(tzinfo=UTC).astimezone(BERLIN)
    assert nxt.date() in (today, today + timedelta(days=1))
    assert nxt.hour == 9
    assert replanned.stats.next_run_time == replanned.next_fire_time

    # The per-second schedule runs again once its calendar holds nothing.
    await calendars.UpdateCalendar(
        calendar_service_pb2.UpdateCalendarRequest(
            calendar=calendar(name=every_day.name), update_mask=field_mask_pb2.FieldMask(paths=["weekdays"])
        )
    )
    await eventually(
        lambda: _at_least(listed(execution_pb2.EXECUTION_STATE_SUCCEEDED), 1),
        10,
        "a tick run after the change",
    )


async def _at_least(found: Any, n: int) -> list[execution_pb2.Execution] | None:
    items: list[execution_pb2.Execution] = await found
    return items if len(items) >= n else None


@pytest.mark.usefixtures("job")
async def test_a_last_business_day_trigger_in_new_york_and_a_calendar_change_replanning_it(
    calendars: CalendarServiceStub, schedules: ScheduleServiceStub
) -> None:
    await create_calendar(calendars, "ny-weekdays", timeZone="America/New_York", weekdays=WORKING_DAYS)
    await create_calendar(
        calendars,
        "new-york",
        timeZone="America/New_York",
        publicHolidays=[{"country": "US", "subdivision": "NY"}],
    )
    business = await create_calendar(
        calendars, "ny-business", timeZone="America/New_York",
        includeCalendars=[f"{PARENT}/calendars/ny-weekdays"],
        excludeCalendars=[f"{PARENT}/calendars/new-york"],
    )  # fmt: skip
    month_end = await create_schedule(
        schedules, "month-end", timeZone="America/New_York",
        trigger={"businessDay": {"calendar": business.name, "day": -1, "timeOfDay": "17:00"}},
    )  # fmt: skip
    assert json_format.MessageToDict(month_end.trigger) == {
        "businessDay": {"calendar": business.name, "day": -1, "timeOfDay": "17:00"}
    }
    request = schedule_service_pb2.PreviewScheduleRequest(name=month_end.name, count=12)
    request.after_time.FromDatetime(datetime(2027, 1, 1, tzinfo=UTC))
    preview = await schedules.PreviewSchedule(request)
    assert [t.local_time for t in preview.fire_times] == [
        f"2027-{m:02d}-{d:02d}T17:00:00{'-05:00' if m in (1, 2, 11, 12) else '-04:00'}"
        for m, d in [(1, 29), (2, 26), (3, 31), (4, 30), (5, 28), (6, 30), (7, 30), (8, 31), (9, 30),
                     (10, 29), (11, 30), (12, 30)]
    ]  # fmt: skip

    violations, _ = await expect_error(
        create_schedule(
            schedules, "bad", trigger={"businessDay": {"calendar": f"{PARENT}/calendars/nope", "day": 0}}
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(violations) == {"schedule.trigger.business_day.day"}
    violations, _ = await expect_error(
        create_schedule(
            schedules, "bad", trigger={"businessDay": {"calendar": f"{PARENT}/calendars/nope", "day": 1}}
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations == {"schedule.trigger.business_day.calendar": "calendar 'nope' does not exist"}

    # Every day is open but the ones `shut` holds: shutting the day the schedule waits for
    # moves its stored next fire time, in the calendar's own transaction.
    shut = await create_calendar(calendars, "shut")
    every_day = [
        f"WEEKDAY_{d}" for d in ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")
    ]
    await create_calendar(calendars, "open", weekdays=every_day, excludeCalendars=[shut.name])
    last_day = await create_schedule(
        schedules, "last-day", trigger={"businessDay": {"calendar": f"{PARENT}/calendars/open", "day": -1}}
    )
    before = last_day.next_fire_time.ToDatetime(tzinfo=UTC)
    assert (before + timedelta(days=1)).day == 1  # the last day of a month, at 00:00 UTC
    await calendars.UpdateCalendar(
        calendar_service_pb2.UpdateCalendarRequest(
            calendar=calendar(name=shut.name, dates=[{"startDate": before.date().isoformat()}])
        )
    )
    got = (await schedules.GetSchedule(schedule_service_pb2.GetScheduleRequest(name=last_day.name))).schedule
    after = got.next_fire_time.ToDatetime(tzinfo=UTC)
    assert after != before
    assert after.date() != before.date()
    assert after > datetime.now(UTC)


async def test_every_next_time_shown_is_a_tick_that_runs_job_stats_lists_and_events_too(
    calendars: CalendarServiceStub,
    schedules: ScheduleServiceStub,
    jobs: JobServiceStub,
    events: EventServiceStub,
    job: job_pb2.Job,
) -> None:
    # `closed` holds the next three days (UTC): a noon schedule skipping it runs on the fourth.
    today = datetime.now(UTC).date()
    closed = await create_calendar(
        calendars,
        "closed",
        dates=[{"startDate": today.isoformat(), "endDate": (today + timedelta(days=2)).isoformat()}],
    )
    noon = await create_schedule(
        schedules, "noon", trigger={"cron": {"expression": "0 12 * * *"}}, excludeCalendars=[closed.name]
    )
    runs = datetime.combine(today + timedelta(days=3), datetime.min.time(), UTC).replace(hour=12)
    assert noon.next_fire_time.ToDatetime(tzinfo=UTC) == runs

    async def job_next_run() -> tuple[datetime, datetime]:
        got = (await jobs.GetJob(job_service_pb2.GetJobRequest(name=job.name))).job
        listed = (await jobs.ListJobs(job_service_pb2.ListJobsRequest(parent=PARENT))).jobs
        (same,) = [j for j in listed if j.name == job.name]
        return (
            got.stats.next_run_time.ToDatetime(tzinfo=UTC),
            same.stats.next_run_time.ToDatetime(tzinfo=UTC),
        )

    # The job's next run is the schedule's, not the excluded tick stored for the dispatcher.
    assert await job_next_run() == (runs, runs)
    got = (await schedules.GetSchedule(schedule_service_pb2.GetScheduleRequest(name=noon.name))).schedule
    assert got.stats.next_run_time.ToDatetime(tzinfo=UTC) == runs
    # A plain schedule of the job that runs before it is the job's next run; one after it is not.
    later = runs + timedelta(days=1)
    await create_schedule(schedules, "later", trigger={"date": {"runTime": later.isoformat()}})
    assert await job_next_run() == (runs, runs)
    sooner = datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC).replace(hour=6)
    await create_schedule(schedules, "sooner", trigger={"date": {"runTime": sooner.isoformat()}})
    assert await job_next_run() == (sooner, sooner)

    # The schedule's snapshot on its created event shows the tick that runs too.
    async def created_snapshot() -> schedule_pb2.Schedule | None:
        listed = await events.ListEvents(
            event_service_pb2.ListEventsRequest(
                parent=PARENT, event_types=[event_pb2.EVENT_TYPE_SCHEDULE_CREATED]
            )
        )
        found = [e.schedule_snapshot for e in listed.events if e.resource == noon.name]
        return found[0] if found else None

    snapshot = await eventually(created_snapshot, 10, "the schedule's created event")
    assert snapshot.next_fire_time.ToDatetime(tzinfo=UTC) == runs


@pytest.mark.usefixtures("job")
async def test_the_next_business_day_from_a_one_off_date_fires_once_and_previews(
    calendars: CalendarServiceStub, schedules: ScheduleServiceStub
) -> None:
    business = await business_days(calendars)
    # Whit Monday 17 May 2027 is a Bavarian holiday: the one-off moves to Tuesday the 18th.
    trigger = {
        "businessDay": {"calendar": business, "day": 1, "timeOfDay": "09:00", "fromDate": "2027-05-17"}
    }
    once = await create_schedule(schedules, "once", timeZone="Europe/Berlin", trigger=trigger)
    assert json_format.MessageToDict(once.trigger) == trigger
    assert once.next_fire_time.ToDatetime(tzinfo=UTC) == datetime(2027, 5, 18, 7, 0, tzinfo=UTC)
    request = schedule_service_pb2.PreviewScheduleRequest(name=once.name, count=5)
    preview = await schedules.PreviewSchedule(request)
    assert [t.local_time for t in preview.fire_times] == ["2027-05-18T09:00:00+02:00"]
    # Counted backward: Saturday 15 May or the business day before it, Friday the 14th.
    unsaved = json_format.ParseDict(
        {
            "job": JOB,
            "timeZone": "Europe/Berlin",
            "trigger": {"businessDay": {"calendar": business, "day": -1, "fromDate": "2027-05-15"}},
        },
        schedule_pb2.Schedule(),
    )
    before = await schedules.PreviewSchedule(
        schedule_service_pb2.PreviewScheduleRequest(schedule=unsaved, count=5)
    )
    assert [t.local_time for t in before.fire_times] == ["2027-05-14T00:00:00+02:00"]

    for body, field in [
        ({"fromDate": "2027-02-30"}, "schedule.trigger.business_day.from_date"),
        ({"fromDate": "2027-05-17", "fromDay": 15}, "schedule.trigger.business_day.from_date"),
    ]:
        violations, _ = await expect_error(
            create_schedule(
                schedules, "bad", trigger={"businessDay": {"calendar": business, "day": 1, **body}}
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert set(violations) == {field}


@pytest.mark.usefixtures("job")
async def test_an_rrule_trigger_with_exdate_round_trips_and_previews(schedules: ScheduleServiceStub) -> None:
    rule = "DTSTART:20270104T090000\nRRULE:FREQ=WEEKLY;BYDAY=MO,WE\nEXDATE:20270106T090000"
    created = await create_schedule(
        schedules,
        "ical",
        trigger={"rrule": {"rule": rule}},
        timeZone="Europe/Berlin",
        startTime="2027-01-01T00:00:00Z",
    )
    assert created.trigger.rrule.rule == rule
    assert created.next_fire_time.ToDatetime(tzinfo=UTC) == datetime(2027, 1, 4, 8, tzinfo=UTC)
    request = schedule_service_pb2.PreviewScheduleRequest(name=created.name, count=3)
    request.after_time.FromDatetime(datetime(2027, 1, 1, tzinfo=UTC))
    preview = await schedules.PreviewSchedule(request)
    assert [t.local_time for t in preview.fire_times] == [
        "2027-01-04T09:00:00+01:00",
        "2027-01-11T09:00:00+01:00",  # Wednesday the 6th is an EXDATE
        "2027-01-13T09:00:00+01:00",
    ]
    violations, _ = await expect_error(
        create_schedule(schedules, "bad", trigger={"rrule": {"rule": "RRULE:FREQ=DAILY"}}),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert list(violations) == ["schedule.trigger.rrule.rule"]


@pytest.mark.postgres
async def test_a_calendar_changed_on_one_replica_replans_the_schedules_every_replica_reads(
    fresh_database_url: Callable[[str], str],
) -> None:
    url = fresh_database_url("postgres")
    replicas = [
        await create_server(Settings(listen="127.0.0.1:0", database_url=url, allow_root_jobs=True))
        for _ in range(2)
    ]
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{replicas[0].port}") as first,
            grpc.aio.insecure_channel(f"127.0.0.1:{replicas[1].port}") as second,
        ):
            await JobServiceStub(first).CreateJob(
                job_service_pb2.CreateJobRequest(
                    parent=PARENT, job_id="report", job=job_pb2.Job(executor="noop")
                )
            )
            shut = await create_calendar(CalendarServiceStub(first), "shut")
            every_day = [f"WEEKDAY_{d}" for d in ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY")]
            every_day += ["WEEKDAY_SATURDAY", "WEEKDAY_SUNDAY"]
            await create_calendar(
                CalendarServiceStub(first), "open", weekdays=every_day, excludeCalendars=[shut.name]
            )
            on_first = ScheduleServiceStub(first)
            last_day = await create_schedule(
                on_first,
                "last-day",
                trigger={"businessDay": {"calendar": f"{PARENT}/calendars/open", "day": -1}},
            )
            daily = await create_schedule(
                on_first,
                "daily",
                trigger={"cron": {"expression": "0 12 * * *"}},
                excludeCalendars=[shut.name],
            )
            waiting = last_day.next_fire_time.ToDatetime(tzinfo=UTC)
            noon = daily.next_fire_time.ToDatetime(tzinfo=UTC)
            # The other replica shuts both days the schedules wait for.
            days = sorted({waiting.date().isoformat(), noon.date().isoformat()})
            await CalendarServiceStub(second).UpdateCalendar(
                calendar_service_pb2.UpdateCalendarRequest(
                    calendar=calendar(name=shut.name, dates=[{"startDate": d} for d in days])
                )
            )
            for stub in (on_first, ScheduleServiceStub(second)):
                got = {
                    s.name.rpartition("/")[2]: s.next_fire_time.ToDatetime(tzinfo=UTC)
                    for s in (
                        await stub.ListSchedules(schedule_service_pb2.ListSchedulesRequest(parent=PARENT))
                    ).schedules
                }
                assert got["last-day"].date().isoformat() not in days
                assert got["last-day"] != waiting
                assert got["daily"].date().isoformat() not in days
                assert got["daily"] > noon
                assert (got["daily"].hour, got["daily"].minute) == (12, 0)
    finally:
        for replica in replicas:
            await replica.stop(grace=0)
