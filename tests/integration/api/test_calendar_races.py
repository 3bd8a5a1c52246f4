"""A schedule written while a calendar it names is being changed keeps the calendar's new content
(PostgreSQL, where the two run at once): CreateSchedule and UpdateSchedule lock the calendars they
use FOR SHARE and check them in their own transaction, and write again on the new calendar when
it changed after they read it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar

import grpc
import psycopg
import pytest
from google.protobuf import json_format
from sqlalchemy.engine import make_url

from cronwire.v1 import (
    calendar_pb2,
    calendar_service_pb2,
    job_pb2,
    job_service_pb2,
    schedule_pb2,
    schedule_service_pb2,
)
from cronwire.v1.calendar_service_pb2_grpc import CalendarServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from cronwire_server.app import RunningServer, create_server
from cronwire_server.config import Settings
from cronwire_server.core.model import Calendar, DateRange
from cronwire_server.storage.records import calendar_fields
from tests.support import eventually

pytestmark = pytest.mark.postgres

PARENT = "namespaces/ops"
BOUND = 10.0
T = TypeVar("T")


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def url(fresh_database_url: Callable[[str], str]) -> str:
    return fresh_database_url("postgres")


@pytest.fixture
async def server(url: str) -> AsyncIterator[RunningServer]:
    running = await create_server(Settings(listen="127.0.0.1:0", database_url=url))
    yield running
    await running.stop(grace=0)


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@pytest.fixture
def blocker(url: str) -> Iterator[psycopg.Connection]:
    """A session that changes a calendar in a transaction of its own, as UpdateCalendar does."""
    with psycopg.connect(_libpq(url)) as conn:
        yield conn
        conn.rollback()


def waiting_for_a_lock(url: str) -> bool:
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        ).fetchone()
    return row is not None and row[0] > 0


async def while_the_calendar_changes(
    url: str, blocker: psycopg.Connection, calendar_id: str, dates: list[date], work: Awaitable[T]
) -> T:
    """Run `work` while `blocker` holds calendar `calendar_id` changed to hold `dates` and not yet
    committed; commit once `work` waits for it (it must), and return what `work` returned."""
    rules = calendar_fields(
        Calendar(namespace="ops", id=calendar_id, dates=tuple(DateRange(d, d) for d in dates))
    )["rules"]
    blocker.execute(
        "UPDATE calendars SET rules = %s, etag = 'changed', update_time = now() "
        "WHERE namespace = 'ops' AND id = %s",
        (json.dumps(rules), calendar_id),
    )
    task = asyncio.ensure_future(work)
    try:
        await eventually(lambda: waiting_for_a_lock(url), BOUND, "the write waiting for the calendar")
        assert not task.done()
    finally:
        blocker.commit()
    async with asyncio.timeout(BOUND):
        return await task


async def test_a_schedule_written_during_a_calendar_change_keeps_the_new_calendar(
    url: str, channel: grpc.aio.Channel, blocker: psycopg.Connection
) -> None:
    calendars, jobs = CalendarServiceStub(channel), JobServiceStub(channel)
    schedules = ScheduleServiceStub(channel)
    await jobs.CreateJob(
        job_service_pb2.CreateJobRequest(parent=PARENT, job_id="report", job=job_pb2.Job(executor="noop"))
    )
    today = datetime.now(UTC).date()
    days = [today + timedelta(days=n) for n in range(1, 6)]
    for calendar_id in ("closed", "shut"):
        await calendars.CreateCalendar(
            calendar_service_pb2.CreateCalendarRequest(
                parent=PARENT, calendar_id=calendar_id, calendar=calendar_pb2.Calendar()
            )
        )

    def noon(n: int) -> datetime:
        return datetime.combine(days[n], datetime.min.time(), UTC).replace(hour=12)

    # CreateSchedule, while `closed` is changed to hold the first four of the days.
    spec = json_format.ParseDict(
        {
            "job": f"{PARENT}/jobs/report",
            "trigger": {"cron": {"expression": "0 12 * * *"}},
            "excludeCalendars": [f"{PARENT}/calendars/closed"],
            "startTime": noon(0).isoformat(),
        },
        schedule_pb2.Schedule(),
    )
    created = await while_the_calendar_changes(
        url,
        blocker,
        "closed",
        days[:4],
        schedules.CreateSchedule(
            schedule_service_pb2.CreateScheduleRequest(parent=PARENT, schedule_id="noon", schedule=spec)
        ),
    )
    # The schedule was written with the new calendar: its next run is past the four days.
    assert created.schedule.next_fire_time.ToDatetime(tzinfo=UTC) == noon(4)
    preview = await schedules.PreviewSchedule(
        schedule_service_pb2.PreviewScheduleRequest(name=created.schedule.name, count=5)
    )
    assert [t.excluded_by for t in preview.fire_times[:2]] == [f"{PARENT}/calendars/closed"] * 2

    # UpdateSchedule naming `shut` too, while `shut` is changed to hold the fifth day.
    spec.exclude_calendars.append(f"{PARENT}/calendars/shut")
    spec.name = created.schedule.name
    updated = await while_the_calendar_changes(
        url,
        blocker,
        "shut",
        days[4:],
        schedules.UpdateSchedule(schedule_service_pb2.UpdateScheduleRequest(schedule=spec)),
    )
    assert updated.schedule.next_fire_time.ToDatetime(tzinfo=UTC) == noon(4) + timedelta(days=1)
    got = await schedules.GetSchedule(schedule_service_pb2.GetScheduleRequest(name=created.schedule.name))
    assert got.schedule.next_fire_time.ToDatetime(tzinfo=UTC) == noon(4) + timedelta(days=1)
