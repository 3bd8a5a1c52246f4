"""JobService over a real channel, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format

from cronwire.v1 import job_pb2, job_service_pb2
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from tests.support import status_details

PARENT = "namespaces/team-a"


def job(**fields: Any) -> job_pb2.Job:
    spec = {"executor": "shell", "parameters": {"argv": ["echo", "hello"]}, **fields}
    return json_format.ParseDict(spec, job_pb2.Job())


async def create(jobs: JobServiceStub, job_id: str, **fields: Any) -> job_pb2.Job:
    response = await jobs.CreateJob(
        job_service_pb2.CreateJobRequest(parent=PARENT, job_id=job_id, job=job(**fields))
    )
    return response.job


async def expect_error(call: Any, code: grpc.StatusCode) -> tuple[dict[str, str], str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return status_details(caught.value)


async def test_create_then_get_returns_every_field(jobs: JobServiceStub) -> None:
    created = await create(
        jobs,
        "nightly-report",
        description="builds the report",
        timeout="90s",
        retryPolicy={"maxAttempts": 3, "initialBackoff": "2s", "backoffMultiplier": 3, "maxBackoff": "60s"},
        maxConcurrency=2,
        dependents=[{"job": f"{PARENT}/jobs/mail-report", "condition": "DEPENDENCY_CONDITION_ON_FAILURE"}],
        callback={"url": "https://hooks.example.com/done", "secret": "s3cret"},
        labels={"team": "data"},
    )
    assert created.name == f"{PARENT}/jobs/nightly-report"
    assert created.etag
    assert created.HasField("create_time")
    assert created.HasField("update_time")
    assert created.callback.secret == ""
    assert created.callback.secret_set

    got = (await jobs.GetJob(job_service_pb2.GetJobRequest(name=created.name))).job
    assert got.HasField("stats")
    assert got.stats.total == 0
    got.ClearField("stats")
    assert got == created
    as_json = json_format.MessageToDict(got)
    assert as_json["parameters"] == {"argv": ["echo", "hello"]}
    assert as_json["timeout"] == "90s"
    assert as_json["retryPolicy"] == {
        "maxAttempts": 3,
        "initialBackoff": "2s",
        "backoffMultiplier": 3.0,
        "maxBackoff": "60s",
    }
    assert as_json["dependents"][0]["condition"] == "DEPENDENCY_CONDITION_ON_FAILURE"
    assert as_json["labels"] == {"team": "data"}


async def test_create_without_id_picks_one(jobs: JobServiceStub) -> None:
    response = await jobs.CreateJob(job_service_pb2.CreateJobRequest(parent=PARENT, job=job()))
    assert response.job.name.startswith(f"{PARENT}/jobs/job-")


async def test_duplicate_id_is_already_exists(jobs: JobServiceStub) -> None:
    await create(jobs, "dup")
    _, reason = await expect_error(create(jobs, "dup"), grpc.StatusCode.ALREADY_EXISTS)
    assert reason == "JOB_ALREADY_EXISTS"


async def test_repeated_request_id_returns_the_first_result(jobs: JobServiceStub) -> None:
    request = job_service_pb2.CreateJobRequest(parent=PARENT, job_id="once", job=job(), request_id="req-1")
    results = await asyncio.gather(*(jobs.CreateJob(request) for _ in range(4)))
    assert len({r.job.etag for r in results}) == 1
    listed = await jobs.ListJobs(job_service_pb2.ListJobsRequest(parent=PARENT))
    assert [j.name for j in listed.jobs] == [f"{PARENT}/jobs/once"]


@pytest.mark.parametrize(
    ("request_fields", "field", "reason"),
    [
        ({"parent": "teams/a"}, "parent", "INVALID_ARGUMENT"),
        ({"job_id": "Bad_Id"}, "job_id", "INVALID_ARGUMENT"),
        ({"job": None}, "job", "INVALID_ARGUMENT"),
        ({"job": {"executor": "cobol", "parameters": {}}}, "job.executor", "INVALID_ARGUMENT"),
        (
            {"job": {"executor": "shell", "parameters": {"argv": []}}},
            "job.parameters.argv",
            "INVALID_ARGUMENT",
        ),
        (
            {"job": {"executor": "shell", "parameters": {"command": "ls"}}},
            "job.parameters",
            "INVALID_ARGUMENT",
        ),
        ({"job": {"executor": "noop", "timeout": "-5s"}}, "job.timeout", "INVALID_ARGUMENT"),
        (
            {"job": {"executor": "noop", "retryPolicy": {"maxAttempts": 3, "backoffMultiplier": 0.5}}},
            "job.retry_policy.backoff_multiplier",
            "INVALID_ARGUMENT",
        ),
        (
            {"job": {"executor": "noop", "dependents": [{"job": "namespaces/other/jobs/x"}]}},
            "job.dependents[0].job",
            "INVALID_ARGUMENT",
        ),
    ],
)
async def test_bad_create_names_the_field_and_stores_nothing(
    jobs: JobServiceStub, request_fields: dict[str, Any], field: str, reason: str
) -> None:
    request = {"parent": PARENT, "job_id": "bad", "job": {"executor": "shell", "parameters": {"argv": ["x"]}}}
    request.update(request_fields)
    if request["job"] is None:
        del request["job"]
    message = json_format.ParseDict(request, job_service_pb2.CreateJobRequest())
    violations, got_reason = await expect_error(jobs.CreateJob(message), grpc.StatusCode.INVALID_ARGUMENT)
    assert any(f == field or f.startswith(field + ".") or f.startswith(field + "[") for f in violations), (
        violations
    )
    assert got_reason == reason
    listed = await jobs.ListJobs(job_service_pb2.ListJobsRequest(parent=PARENT))
    assert list(listed.jobs) == []


async def test_list_pages_through_everything_once(jobs: JobServiceStub) -> None:
    for index in range(5):
        await create(jobs, f"job-{index}")
    await create(jobs, "web-1", executor="http", parameters={"url": "https://example.com/hook"})
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await jobs.ListJobs(
            job_service_pb2.ListJobsRequest(parent=PARENT, page_size=2, page_token=token)
        )
        seen += [j.name.rsplit("/", 1)[1] for j in page.jobs]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == [*(f"job-{i}" for i in range(5)), "web-1"]
    assert pages == 3

    shell_only = await jobs.ListJobs(job_service_pb2.ListJobsRequest(parent=PARENT, executor="http"))
    assert [j.name for j in shell_only.jobs] == [f"{PARENT}/jobs/web-1"]
    other = await jobs.ListJobs(job_service_pb2.ListJobsRequest(parent="namespaces/team-b"))
    assert list(other.jobs) == []


async def test_list_rejects_negative_page_size_and_foreign_tokens(jobs: JobServiceStub) -> None:
    violations, _ = await expect_error(
        jobs.ListJobs(job_service_pb2.ListJobsRequest(parent=PARENT, page_size=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "page_size" in violations
    for index in range(3):
        await create(jobs, f"j{index}")
    page = await jobs.ListJobs(job_service_pb2.ListJobsRequest(parent=PARENT, page_size=1))
    violations, _ = await expect_error(
        jobs.ListJobs(
            job_service_pb2.ListJobsRequest(parent=PARENT, page_token=page.next_page_token, executor="http")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "page_token" in violations
    violations, _ = await expect_error(
        jobs.ListJobs(job_service_pb2.ListJobsRequest(parent=PARENT, page_token="garbage")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "page_token" in violations


async def test_update_with_mask_changes_only_the_named_fields(jobs: JobServiceStub) -> None:
    created = await create(jobs, "upd", description="old", labels={"a": "1"})
    change = job_pb2.Job(name=created.name, description="new", labels={"b": "2"})
    updated = (
        await jobs.UpdateJob(
            job_service_pb2.UpdateJobRequest(
                job=change, update_mask=field_mask_pb2.FieldMask(paths=["description"])
            )
        )
    ).job
    assert updated.description == "new"
    assert dict(updated.labels) == {"a": "1"}
    assert updated.etag != created.etag
    assert updated.create_time == created.create_time


async def test_get_shows_the_stored_version_after_checked_and_stored_updates(jobs: JobServiceStub) -> None:
    created = await create(jobs, "shown", description="old")

    async def shown() -> job_pb2.Job:
        got = (await jobs.GetJob(job_service_pb2.GetJobRequest(name=created.name))).job
        got.ClearField("stats")  # GetJob's own
        return got

    assert await shown() == created
    # A checked update answers with the job it would store, and stores nothing.
    checked = job_pb2.Job(name=created.name, description="checked", etag=created.etag)
    answer = await jobs.UpdateJob(job_service_pb2.UpdateJobRequest(job=checked, validate_only=True))
    assert answer.job.description == "checked"
    assert await shown() == created
    stored = job_pb2.Job(name=created.name, description="new", etag=created.etag)
    updated = (await jobs.UpdateJob(job_service_pb2.UpdateJobRequest(job=stored))).job
    assert updated.description == "new"
    assert await shown() == updated


async def test_update_without_mask_takes_the_set_fields(jobs: JobServiceStub) -> None:
    created = await create(jobs, "nomask", description="old", timeout="10s")
    change = json_format.ParseDict({"name": created.name, "timeout": "20s"}, job_pb2.Job())
    updated = (await jobs.UpdateJob(job_service_pb2.UpdateJobRequest(job=change))).job
    assert updated.timeout.seconds == 20
    assert updated.description == "old"


async def test_update_keeps_the_callback_secret(jobs: JobServiceStub) -> None:
    created = await create(jobs, "cb", callback={"url": "https://hooks.example.com/a", "secret": "k"})
    change = json_format.ParseDict(
        {"name": created.name, "callback": {"url": "https://hooks.example.com/b"}}, job_pb2.Job()
    )
    updated = (await jobs.UpdateJob(job_service_pb2.UpdateJobRequest(job=change))).job
    assert updated.callback.url == "https://hooks.example.com/b"
    assert updated.callback.secret_set


async def test_update_with_stale_etag_is_aborted(jobs: JobServiceStub) -> None:
    created = await create(jobs, "etag")
    first = job_pb2.Job(name=created.name, description="first", etag=created.etag)
    await jobs.UpdateJob(job_service_pb2.UpdateJobRequest(job=first))
    second = job_pb2.Job(name=created.name, description="second", etag=created.etag)
    _, reason = await expect_error(
        jobs.UpdateJob(job_service_pb2.UpdateJobRequest(job=second)), grpc.StatusCode.ABORTED
    )
    assert reason == "ETAG_MISMATCH"
    got = (await jobs.GetJob(job_service_pb2.GetJobRequest(name=created.name))).job
    assert got.description == "first"


async def test_bad_update_names_the_field_and_changes_nothing(jobs: JobServiceStub) -> None:
    created = await create(jobs, "strict")
    bad = json_format.ParseDict(
        {"name": created.name, "parameters": {"argv": "not-a-list"}, "description": "changed"}, job_pb2.Job()
    )
    violations, _ = await expect_error(
        jobs.UpdateJob(job_service_pb2.UpdateJobRequest(job=bad)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert any(f.startswith("job.parameters") for f in violations), violations
    violations, _ = await expect_error(
        jobs.UpdateJob(
            job_service_pb2.UpdateJobRequest(
                job=bad, update_mask=field_mask_pb2.FieldMask(paths=["nonsense"])
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "update_mask" in violations
    got = (await jobs.GetJob(job_service_pb2.GetJobRequest(name=created.name))).job
    got.ClearField("stats")
    assert got == created


async def test_update_and_get_of_missing_job_are_not_found(jobs: JobServiceStub) -> None:
    name = f"{PARENT}/jobs/ghost"
    _, reason = await expect_error(
        jobs.GetJob(job_service_pb2.GetJobRequest(name=name)), grpc.StatusCode.NOT_FOUND
    )
    assert reason == "JOB_NOT_FOUND"
    await expect_error(
        jobs.UpdateJob(job_service_pb2.UpdateJobRequest(job=job_pb2.Job(name=name, description="x"))),
        grpc.StatusCode.NOT_FOUND,
    )
    violations, _ = await expect_error(
        jobs.GetJob(job_service_pb2.GetJobRequest(name="jobs/ghost")), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "name" in violations


async def test_delete_removes_the_job_and_its_schedules(
    jobs: JobServiceStub, schedules: ScheduleServiceStub
) -> None:
    from cronwire.v1 import schedule_pb2, schedule_service_pb2

    created = await create(jobs, "doomed")
    schedule = schedule_pb2.Schedule(job=created.name, trigger={"cron": {"expression": "*/5 * * * *"}})
    made = await schedules.CreateSchedule(
        schedule_service_pb2.CreateScheduleRequest(parent=PARENT, schedule_id="every-5", schedule=schedule)
    )
    await expect_error(
        jobs.DeleteJob(job_service_pb2.DeleteJobRequest(name=created.name, etag="stale")),
        grpc.StatusCode.ABORTED,
    )
    await jobs.DeleteJob(job_service_pb2.DeleteJobRequest(name=created.name, etag=created.etag))
    await expect_error(
        jobs.GetJob(job_service_pb2.GetJobRequest(name=created.name)), grpc.StatusCode.NOT_FOUND
    )
    await expect_error(
        schedules.GetSchedule(schedule_service_pb2.GetScheduleRequest(name=made.schedule.name)),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        jobs.DeleteJob(job_service_pb2.DeleteJobRequest(name=created.name)), grpc.StatusCode.NOT_FOUND
    )


async def test_list_job_types_describes_each_kind(jobs: JobServiceStub) -> None:
    response = await jobs.ListJobTypes(job_service_pb2.ListJobTypesRequest())
    kinds = {t.name: t for t in response.job_types}
    assert {"shell", "python", "http", "noop"} <= set(kinds)
    shell = json_format.MessageToDict(kinds["shell"].parameters_schema)
    assert "argv" in shell["properties"]
    for kind in kinds.values():
        assert kind.description
        # Every example is accepted by CreateJob as it is.
        await jobs.CreateJob(
            job_service_pb2.CreateJobRequest(
                parent=PARENT,
                job_id=f"example-{kind.name}",
                job=job_pb2.Job(executor=kind.name, parameters=kind.example),
            )
        )
