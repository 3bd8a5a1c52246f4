"""A job's arguments_schema over a real channel, on each database backend: schemas checked at
create and update, every way arguments enter (RunJob, CreateSchedule, UpdateSchedule,
BackfillSchedule) checked against it with the argument named, declared defaults filled in,
and nothing stored for a refused call."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import field_mask_pb2, json_format

from cronwire.v1 import (
    execution_pb2,
    execution_service_pb2,
    job_pb2,
    job_service_pb2,
    schedule_pb2,
    schedule_service_pb2,
)
from cronwire.v1.execution_service_pb2_grpc import ExecutionServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from tests.integration.api.test_execution_service import PARENT, run
from tests.integration.api.test_job_service import expect_error

SCHEMA = {
    "type": "object",
    "properties": {
        "region": {"type": "string", "enum": ["eu", "us"]},
        "days": {"type": "integer", "minimum": 1, "default": 7},
        "hosts": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["region"],
    "additionalProperties": False,
}


async def template(jobs: JobServiceStub, job_id: str = "report", schema: Any = SCHEMA) -> job_pb2.Job:
    job = json_format.ParseDict({"executor": "noop", "argumentsSchema": schema}, job_pb2.Job())
    request = job_service_pb2.CreateJobRequest(parent=PARENT, job_id=job_id, job=job)
    return (await jobs.CreateJob(request)).job


def schedule_request(job: str, schedule_id: str, arguments: dict[str, Any]) -> Any:
    return json_format.ParseDict(
        {
            "parent": PARENT,
            "scheduleId": schedule_id,
            "schedule": {"job": job, "trigger": {"interval": {"every": "3600s"}}, "arguments": arguments},
        },
        schedule_service_pb2.CreateScheduleRequest(),
    )


async def executions_of(executions: ExecutionServiceStub, job: str) -> list[execution_pb2.Execution]:
    request = execution_service_pb2.ListExecutionsRequest(parent=PARENT, job=job, page_size=100)
    return list((await executions.ListExecutions(request)).executions)


async def test_the_schema_is_stored_returned_and_updated(jobs: JobServiceStub) -> None:
    created = await template(jobs)
    assert json_format.MessageToDict(created.arguments_schema) == SCHEMA
    got = (await jobs.GetJob(job_service_pb2.GetJobRequest(name=created.name))).job
    assert json_format.MessageToDict(got.arguments_schema) == SCHEMA
    # Cleared by its mask path: any arguments again.
    update = job_pb2.Job(name=created.name)
    mask = field_mask_pb2.FieldMask(paths=["arguments_schema"])
    updated = (await jobs.UpdateJob(job_service_pb2.UpdateJobRequest(job=update, update_mask=mask))).job
    assert not updated.HasField("arguments_schema")


async def test_an_invalid_schema_is_refused_naming_the_field(jobs: JobServiceStub) -> None:
    violations, _ = await expect_error(
        template(jobs, "bad", {"type": "object", "properties": {"n": {"type": "count"}}}),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    [(field, description)] = violations.items()
    assert field.startswith("job.arguments_schema"), violations
    assert "not a valid JSON Schema" in description
    violations, _ = await expect_error(
        template(jobs, "list", {"type": "array"}), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert list(violations) == ["job.arguments_schema.type"]
    await expect_error(
        jobs.GetJob(job_service_pb2.GetJobRequest(name=f"{PARENT}/jobs/bad")), grpc.StatusCode.NOT_FOUND
    )


async def test_run_job_checks_arguments_names_each_one_and_fills_defaults(
    jobs: JobServiceStub, executions: ExecutionServiceStub
) -> None:
    job = (await template(jobs)).name
    violations, _ = await expect_error(
        run(jobs, job, arguments={"region": "mars", "days": 0, "hosts": ["a", 2], "colour": "red"}),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(violations) == {"arguments.region", "arguments.days", "arguments.hosts[1]", "arguments.colour"}
    assert "unknown argument" in violations["arguments.colour"]
    violations, _ = await expect_error(run(jobs, job, arguments={}), grpc.StatusCode.INVALID_ARGUMENT)
    assert violations == {"arguments.region": "required"}
    assert await executions_of(executions, job) == []  # nothing stored for a refused run

    queued = await run(jobs, job, arguments={"region": "eu"})
    assert json_format.MessageToDict(queued.arguments) == {"region": "eu", "days": 7}
    given = await run(jobs, job, arguments={"region": "us", "days": 30})
    assert json_format.MessageToDict(given.arguments) == {"region": "us", "days": 30}
    # A job without a schema takes any arguments, as before.
    free = (await template(jobs, "free", None)).name
    assert json_format.MessageToDict((await run(jobs, free, arguments={"x": 1})).arguments) == {"x": 1}


async def test_a_refused_run_in_a_batch_does_not_fail_the_others(jobs: JobServiceStub) -> None:
    job = (await template(jobs)).name
    outcomes = await asyncio.gather(
        *(run(jobs, job, arguments={"region": "eu" if n % 2 else "mars"}) for n in range(8)),
        return_exceptions=True,
    )
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert [o.code() for o in refused] == [grpc.StatusCode.INVALID_ARGUMENT] * 4
    assert sum(isinstance(o, execution_pb2.Execution) for o in outcomes) == 4


async def test_schedules_are_checked_at_create_and_update_and_store_the_defaults(
    jobs: JobServiceStub, schedules: ScheduleServiceStub
) -> None:
    job = (await template(jobs)).name
    violations, _ = await expect_error(
        schedules.CreateSchedule(schedule_request(job, "bad", {"region": "mars"})),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert list(violations) == ["schedule.arguments.region"]
    await expect_error(
        schedules.GetSchedule(schedule_service_pb2.GetScheduleRequest(name=f"{PARENT}/schedules/bad")),
        grpc.StatusCode.NOT_FOUND,
    )
    created = (await schedules.CreateSchedule(schedule_request(job, "eu", {"region": "eu"}))).schedule
    assert json_format.MessageToDict(created.arguments) == {"region": "eu", "days": 7}

    change = json_format.ParseDict({"name": created.name, "arguments": {"days": 3}}, schedule_pb2.Schedule())
    mask = field_mask_pb2.FieldMask(paths=["arguments"])
    violations, _ = await expect_error(
        schedules.UpdateSchedule(
            schedule_service_pb2.UpdateScheduleRequest(schedule=change, update_mask=mask)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations == {"schedule.arguments.region": "required"}
    change = json_format.ParseDict(
        {"name": created.name, "arguments": {"region": "us"}}, schedule_pb2.Schedule()
    )
    updated = (
        await schedules.UpdateSchedule(
            schedule_service_pb2.UpdateScheduleRequest(schedule=change, update_mask=mask)
        )
    ).schedule
    assert json_format.MessageToDict(updated.arguments) == {"region": "us", "days": 7}


async def test_a_backfill_checks_the_schedules_arguments_against_the_jobs_schema_of_today(
    jobs: JobServiceStub, schedules: ScheduleServiceStub
) -> None:
    job = await template(jobs, "loose", {"type": "object"})
    schedule = (
        await schedules.CreateSchedule(schedule_request(job.name, "old", {"region": "mars"}))
    ).schedule
    # The job's schema tightened after the schedule was made.
    strict = json_format.ParseDict({"name": job.name, "argumentsSchema": SCHEMA}, job_pb2.Job())
    mask = field_mask_pb2.FieldMask(paths=["arguments_schema"])
    await jobs.UpdateJob(job_service_pb2.UpdateJobRequest(job=strict, update_mask=mask))
    now = datetime.now(UTC)
    backfill = schedule_service_pb2.BackfillScheduleRequest(name=schedule.name)
    backfill.start_time.FromDatetime(now - timedelta(hours=3))
    backfill.end_time.FromDatetime(now)
    violations, _ = await expect_error(schedules.BackfillSchedule(backfill), grpc.StatusCode.INVALID_ARGUMENT)
    assert list(violations) == ["arguments.region"]
    assert "the schedule's argument does not match" in violations["arguments.region"]
