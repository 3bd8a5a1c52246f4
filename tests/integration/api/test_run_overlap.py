"""RunJob respect_overlap over a real channel, on each database backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import json_format

from cronwire.v1 import execution_pb2, schedule_pb2, schedule_service_pb2
from cronwire.v1.execution_service_pb2_grpc import ExecutionServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from tests.integration.api.test_execution_service import PARENT, make_job, run


async def test_respect_overlap_skips_while_a_skip_schedule_runs(
    jobs: JobServiceStub, schedules: ScheduleServiceStub, executions: ExecutionServiceStub
) -> None:
    job = await make_job(jobs, "slow", executor="shell", parameters={"argv": ["sleep", "30"]})
    request = json_format.ParseDict(
        {
            "parent": PARENT,
            "scheduleId": "hourly",
            "schedule": {"job": job, "trigger": {"interval": {"every": "3600s"}}},
        },
        schedule_service_pb2.CreateScheduleRequest(),
    )
    schedule = (await schedules.CreateSchedule(request)).schedule
    assert schedule.overlap_policy == schedule_pb2.OVERLAP_POLICY_SKIP  # the default
    queued = await run(jobs, job, respectOverlap=True)
    assert queued.state == execution_pb2.EXECUTION_STATE_QUEUED

    now = datetime.now(UTC)
    backfill = schedule_service_pb2.BackfillScheduleRequest(name=schedule.name)
    backfill.start_time.FromDatetime(now - timedelta(minutes=90))
    backfill.end_time.FromDatetime(now)
    assert (await schedules.BackfillSchedule(backfill)).executions
    skipped = await run(jobs, job, respectOverlap=True)
    assert skipped.state == execution_pb2.EXECUTION_STATE_SKIPPED
    assert skipped.skip_reason == execution_pb2.SKIP_REASON_OVERLAP
    assert skipped.trigger == execution_pb2.EXECUTION_TRIGGER_RUN_NOW
    assert schedule.name in skipped.error
    assert (await run(jobs, job)).state == execution_pb2.EXECUTION_STATE_QUEUED
