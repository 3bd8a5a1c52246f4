"""Every list is paged by size as well as by count: a job's parameters may take 256 KiB and a run's
result 1 MiB, so a page bounded by count alone could pass the size of a message the server sends
(8 MiB by default), built whole before being refused. A page holds about 1 MiB of such values
and at least one item; `next_page_token` goes on from its last."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from cronwire.v1 import (
    calendar_pb2,
    calendar_service_pb2,
    checkin_pb2,
    checkin_service_pb2,
    execution_service_pb2,
    job_service_pb2,
    schedule_pb2,
    schedule_service_pb2,
)
from cronwire.v1.calendar_service_pb2_grpc import CalendarServiceStub
from cronwire.v1.checkin_service_pb2_grpc import CheckInServiceStub
from cronwire.v1.execution_service_pb2_grpc import ExecutionServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from cronwire_server.app import RunningServer
from tests.integration.api.test_execution_service import ENDED, PARENT, make_job, run, wait_state
from tests.support import store_value

LARGE = 300_000  # characters of one item's large value: a page takes items while it holds under 1 MiB: four


async def every_page(
    method: Callable[[Any], Awaitable[Any]], request: Callable[..., Message], field: str, **fields: Any
) -> list[list[Message]]:
    """The pages of a list (pages of up to 1,000 asked for), each checked to be a bounded response."""
    pages: list[list[Message]] = []
    token = ""
    while True:
        page = await method(request(parent=PARENT, page_size=1000, page_token=token, **fields))
        assert page.ByteSize() <= 2 * 1024 * 1024
        pages.append(list(getattr(page, field)))
        token = page.next_page_token
        if not token:
            return pages


async def test_executions_with_large_results(
    server: RunningServer, jobs: JobServiceStub, executions: ExecutionServiceStub
) -> None:
    # 16 runs returning 300 KB each made a default page of 4.8 MB, which a gRPC client refuses
    # (RESOURCE_EXHAUSTED past 4 MiB); a page of 1,000 such would have been 300 MB, built whole.
    job = await make_job(jobs, "large", executor="noop")
    names = [(await run(jobs, job)).name for _ in range(16)]
    for name in names:
        await wait_state(executions, name, ENDED)
    await store_value(server.store, "executions", "result", {"data": "x" * LARGE}, "job_id = 'large'")

    pages = await every_page(
        executions.ListExecutions, execution_service_pb2.ListExecutionsRequest, "executions", job=job
    )
    listed = [e for p in pages for e in p]
    assert sorted(e.name for e in listed) == sorted(names)
    assert all(json_format.MessageToDict(e.result) == {"data": "x" * LARGE} for e in listed)
    assert max(len(p) for p in pages) == 4


async def test_jobs_and_schedules_with_large_documents(
    server: RunningServer, jobs: JobServiceStub, schedules: ScheduleServiceStub
) -> None:
    job_names = [await make_job(jobs, f"big-{n}", executor="noop") for n in range(8)]
    trigger = schedule_pb2.Trigger(cron=schedule_pb2.CronTrigger(expression="0 3 * * *"))
    for n in range(8):
        schedule = schedule_pb2.Schedule(job=job_names[0], trigger=trigger)
        request = schedule_service_pb2.CreateScheduleRequest(
            parent=PARENT, schedule_id=f"big-{n}", schedule=schedule
        )
        await schedules.CreateSchedule(request)
    await store_value(server.store, "jobs", "description", "d" * LARGE, "id LIKE 'big-%'")
    await store_value(server.store, "schedules", "arguments", {"a": "x" * LARGE}, "id LIKE 'big-%'")

    job_pages = await every_page(jobs.ListJobs, job_service_pb2.ListJobsRequest, "jobs")
    assert [j.name for p in job_pages for j in p] == sorted(job_names)
    assert max(len(p) for p in job_pages) == 4
    schedule_pages = await every_page(
        schedules.ListSchedules, schedule_service_pb2.ListSchedulesRequest, "schedules"
    )
    assert [s.name for p in schedule_pages for s in p] == [f"{PARENT}/schedules/big-{n}" for n in range(8)]
    assert max(len(p) for p in schedule_pages) == 4


async def test_calendars_and_check_ins_with_large_documents(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    calendars, check_ins = CalendarServiceStub(channel), CheckInServiceStub(channel)
    for n in range(8):
        weekdays = calendar_pb2.Calendar(weekdays=[calendar_pb2.WEEKDAY_SUNDAY])
        request = calendar_service_pb2.CreateCalendarRequest(
            parent=PARENT, calendar_id=f"big-{n}", calendar=weekdays
        )
        await calendars.CreateCalendar(request)
        spec = checkin_pb2.CheckIn()
        spec.trigger.cron.expression = "0 2 * * *"
        spec.grace.FromSeconds(600)
        await check_ins.CreateCheckIn(
            checkin_service_pb2.CreateCheckInRequest(parent=PARENT, check_in_id=f"big-{n}", check_in=spec)
        )
    await store_value(server.store, "calendars", "description", "d" * LARGE, "id LIKE 'big-%'")
    await store_value(server.store, "check_ins", "description", "d" * LARGE, "id LIKE 'big-%'")

    lists = (
        (calendars.ListCalendars, calendar_service_pb2.ListCalendarsRequest, "calendars"),
        (check_ins.ListCheckIns, checkin_service_pb2.ListCheckInsRequest, "check_ins"),
    )
    for method, request, field in lists:
        pages = await every_page(method, request, field)
        assert len([item for page in pages for item in page]) == 8, field
        assert max(len(page) for page in pages) == 4, field
