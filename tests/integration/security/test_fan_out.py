"""The executions one run can fan out to through dependents, over real channels: a job change that
would let one run (of the job or of a job reaching it) lead to more than --max-fan-out executions
is INVALID_ARGUMENT naming `dependents`, and a backfill whose ticks times its job's fan-out exceed
the cap is INVALID_ARGUMENT naming the range."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format

from cronwire.v1 import job_pb2, job_service_pb2, schedule_pb2, schedule_service_pb2
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from cronwire_server.app import create_server
from cronwire_server.config import Settings
from tests.support import status_details

NS = "namespaces/fan"


@pytest.fixture
async def channel(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[grpc.aio.Channel]:
    limits = getattr(request, "param", {})
    running = await create_server(Settings(listen="127.0.0.1:0", database_url=database_url, **limits))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield channel
    finally:
        await running.stop(grace=0)


def _job(*dependents: str) -> job_pb2.Job:
    return json_format.ParseDict(
        {"executor": "noop", "dependents": [{"job": f"{NS}/jobs/{d}"} for d in dependents]}, job_pb2.Job()
    )


async def create(jobs: JobServiceStub, job_id: str, *dependents: str, validate_only: bool = False) -> None:
    request = job_service_pb2.CreateJobRequest(
        parent=NS, job_id=job_id, job=_job(*dependents), validate_only=validate_only
    )
    await jobs.CreateJob(request)


async def set_dependents(
    jobs: JobServiceStub, job_id: str, *dependents: str, validate_only: bool = False
) -> None:
    job = _job(*dependents)
    job.name = f"{NS}/jobs/{job_id}"
    mask = field_mask_pb2.FieldMask(paths=["dependents"])
    await jobs.UpdateJob(
        job_service_pb2.UpdateJobRequest(job=job, update_mask=mask, validate_only=validate_only)
    )


async def refused(call: Any, field: str) -> str:
    """The description of `field` in the INVALID_ARGUMENT `call` must fail with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    violations, _ = status_details(caught.value)
    assert field in violations, violations
    return violations[field]


def assert_mentions(text: str, *parts: str) -> None:
    assert [part for part in parts if part not in text] == [], text


async def dependents_of(jobs: JobServiceStub, job_id: str) -> list[str]:
    got = (await jobs.GetJob(job_service_pb2.GetJobRequest(name=f"{NS}/jobs/{job_id}"))).job
    return [d.job.rsplit("/", 1)[1] for d in got.dependents]


async def test_a_wide_tree_is_refused_at_create_with_its_count(channel: grpc.aio.Channel) -> None:
    """Default limit 100: a root over 10 jobs of 10 dependents each would lead to 1 + 10 * 11."""
    jobs = JobServiceStub(channel)
    for b in range(10):
        await create(jobs, f"b{b}", *(f"c{b}-{c}" for c in range(10)))
    middles = [f"b{b}" for b in range(10)]
    for validate_only in (True, False):
        why = await refused(create(jobs, "root", *middles, validate_only=validate_only), "job.dependents")
        assert_mentions(why, "'root'", "111 executions", "--max-fan-out")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await jobs.GetJob(job_service_pb2.GetJobRequest(name=f"{NS}/jobs/root"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    await create(jobs, "root", *middles[:8])  # 1 + 8 * 11 = 89: accepted


@pytest.mark.parametrize("channel", [{"max_fan_out": 10}], indirect=True)
async def test_a_downstream_change_that_grows_an_upstream_fan_out_is_refused(
    channel: grpc.aio.Channel,
) -> None:
    jobs = JobServiceStub(channel)
    await create(jobs, "b", "d")
    await create(jobs, "top", "b", "c")  # 1 + 2 + 1 = 4
    grown = [f"d{n}" for n in range(8)]  # b: 1 + 8 = 9, under 10 itself; top: 1 + 9 + 1 = 11
    for validate_only in (True, False):
        why = await refused(set_dependents(jobs, "b", *grown, validate_only=validate_only), "job.dependents")
        assert_mentions(why, "'top'", "11 executions")
    assert await dependents_of(jobs, "b") == ["d"]
    # A job created later under a dependent that did not exist yet grows its ancestors too.
    why = await refused(create(jobs, "c", *grown), "job.dependents")  # top: 1 + 2 + 9
    assert_mentions(why, "'top'", "12 executions")
    await set_dependents(jobs, "b", *grown[:7])  # top: 1 + 8 + 1 = 10, the limit: accepted
    assert len(await dependents_of(jobs, "b")) == 7


@pytest.mark.parametrize("channel", [{"max_fan_out": 10}], indirect=True)
async def test_a_diamond_counts_every_path_and_is_accepted_up_to_the_limit(channel: grpc.aio.Channel) -> None:
    jobs = JobServiceStub(channel)
    await create(jobs, "d", "e1", "e2")  # 3
    await create(jobs, "b", "d")  # 4
    await create(jobs, "c", "d")  # 4
    await create(jobs, "a", "b", "c", "x")  # 1 + 4 + 4 + 1 = 10: d runs once per path
    why = await refused(set_dependents(jobs, "d", "e1", "e2", "e3"), "job.dependents")
    assert_mentions(why, "'a'", "12 executions")
    assert await dependents_of(jobs, "d") == ["e1", "e2"]


async def test_a_backfill_past_the_executions_cap_is_refused(channel: grpc.aio.Channel) -> None:
    """1,000 ticks (the most a backfill takes) of a job leading to 11 executions each: 11,000."""
    jobs, schedules = JobServiceStub(channel), ScheduleServiceStub(channel)
    await create(jobs, "wide", *(f"w{n}" for n in range(10)))
    await create(jobs, "alone")

    async def backfill(job_id: str) -> schedule_service_pb2.BackfillScheduleResponse:
        schedule = schedule_pb2.Schedule(
            job=f"{NS}/jobs/{job_id}", trigger={"cron": {"expression": "* * * * *"}}
        )
        made = await schedules.CreateSchedule(
            schedule_service_pb2.CreateScheduleRequest(parent=NS, schedule_id=job_id, schedule=schedule)
        )
        request = schedule_service_pb2.BackfillScheduleRequest(name=made.schedule.name, dry_run=True)
        request.start_time.FromJsonString("2026-01-01T00:00:00Z")
        request.end_time.FromJsonString("2026-01-01T16:40:00Z")  # 1,000 minutes
        return await schedules.BackfillSchedule(request)

    why = await refused(backfill("wide"), "end_time")
    assert_mentions(why, "1000 ticks", "11000", "10000")
    assert len((await backfill("alone")).fire_times) == 1000
