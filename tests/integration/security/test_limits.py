"""The server's limits over real channels: message size, jobs and schedules per namespace, running
executions per namespace, captured output. Past a limit a caller gets RESOURCE_EXHAUSTED naming it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from cronwire.cli import main
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
from cronwire_server.app import create_server
from cronwire_server.config import Settings
from tests.integration.api.test_execution_service import ENDED, eventually, wait_state
from tests.support import start_server, status_details


@asynccontextmanager
async def serving(database_url: str, **limits: Any) -> AsyncIterator[grpc.aio.Channel]:
    settings = Settings(listen="127.0.0.1:0", database_url=database_url, **limits)
    running = await create_server(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield channel
    finally:
        await running.stop(grace=0)


async def create_job(jobs: JobServiceStub, namespace: str, job_id: str, **fields: Any) -> job_pb2.Job:
    job = json_format.ParseDict({"executor": "noop", **fields}, job_pb2.Job())
    request = job_service_pb2.CreateJobRequest(parent=f"namespaces/{namespace}", job_id=job_id, job=job)
    return (await jobs.CreateJob(request)).job


async def exhausted(call: Awaitable[Any]) -> tuple[str, str]:
    """The message and ErrorInfo reason of a call that must fail with RESOURCE_EXHAUSTED."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
    return caught.value.details() or "", status_details(caught.value)[1]


async def count_jobs(jobs: JobServiceStub, namespace: str) -> int:
    listed = await jobs.ListJobs(
        job_service_pb2.ListJobsRequest(parent=f"namespaces/{namespace}", page_size=1000)
    )
    return len(listed.jobs)


async def test_a_request_over_max_message_bytes_is_refused(
    fresh_database_url: Callable[[str], str],
) -> None:
    async with serving(fresh_database_url("sqlite"), max_message_bytes=64 * 1024) as channel:
        jobs = JobServiceStub(channel)
        await create_job(jobs, "big", "fits", parameters={"argv": ["echo", "x" * 60_000]}, executor="shell")
        message, _ = await exhausted(
            create_job(jobs, "big", "too-big", parameters={"argv": ["echo", "x" * 70_000]}, executor="shell")
        )
        assert "larger than max" in message
        assert str(64 * 1024) in message
        assert await count_jobs(jobs, "big") == 1


async def test_jobs_per_namespace(database_url: str) -> None:
    async with serving(database_url, max_jobs_per_namespace=2) as channel:
        jobs = JobServiceStub(channel)
        await create_job(jobs, "small", "a")
        first = job_service_pb2.CreateJobRequest(
            parent="namespaces/small", job_id="b", job=job_pb2.Job(executor="noop"), request_id="create-b"
        )
        await jobs.CreateJob(first)
        message, reason = await exhausted(create_job(jobs, "small", "c"))
        assert reason == "JOB_LIMIT_REACHED"
        assert "'small'" in message
        assert "2 jobs" in message
        assert "--max-jobs-per-namespace" in message
        # Nothing half stored: not the job, and no event of it.
        assert await count_jobs(jobs, "small") == 2
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await jobs.GetJob(job_service_pb2.GetJobRequest(name="namespaces/small/jobs/c"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        # A retried create of a job that got in still gets it.
        assert (await jobs.CreateJob(first)).job.name == "namespaces/small/jobs/b"
        # Other namespaces have their own count; a deletion makes room.
        await create_job(jobs, "other", "c")
        await jobs.DeleteJob(job_service_pb2.DeleteJobRequest(name="namespaces/small/jobs/a"))
        await create_job(jobs, "small", "c")


async def test_concurrent_creates_at_the_limit(database_url: str, backend: str) -> None:
    async with serving(database_url, max_jobs_per_namespace=5) as channel:
        jobs = JobServiceStub(channel)
        results = await asyncio.gather(
            *(create_job(jobs, "race", f"job-{n}") for n in range(20)), return_exceptions=True
        )
        created = [r for r in results if isinstance(r, job_pb2.Job)]
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(created) + len(refused) == 20
        assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        stored = await count_jobs(jobs, "race")
        # Exact on both databases: the namespace's count row is taken in the creates' transaction.
        assert stored == len(created) == 5
        # A namespace at its limit takes no more.
        await exhausted(create_job(jobs, "race", "one-more"))


async def test_schedules_per_namespace(database_url: str) -> None:
    async with serving(database_url, max_schedules_per_namespace=1) as channel:
        jobs, schedules = JobServiceStub(channel), ScheduleServiceStub(channel)
        job = await create_job(jobs, "sched", "tick")

        def create(schedule_id: str) -> Awaitable[schedule_service_pb2.CreateScheduleResponse]:
            schedule = schedule_pb2.Schedule(job=job.name, trigger={"cron": {"expression": "0 3 * * *"}})
            return schedules.CreateSchedule(
                schedule_service_pb2.CreateScheduleRequest(
                    parent="namespaces/sched", schedule_id=schedule_id, schedule=schedule
                )
            )

        await create("first")
        message, reason = await exhausted(create("second"))
        assert reason == "SCHEDULE_LIMIT_REACHED"
        assert "1 schedules" in message
        assert "--max-schedules-per-namespace" in message
        listed = await schedules.ListSchedules(
            schedule_service_pb2.ListSchedulesRequest(parent="namespaces/sched")
        )
        assert [s.name for s in listed.schedules] == ["namespaces/sched/schedules/first"]


async def test_max_running_per_namespace_queues_the_rest(database_url: str) -> None:
    async with serving(database_url, max_running_per_namespace=1) as channel:
        jobs, executions = JobServiceStub(channel), ExecutionServiceStub(channel)
        for namespace in ("busy", "free"):
            await create_job(jobs, namespace, "long", parameters={"sleep_seconds": 1.5})

        async def run(namespace: str) -> str:
            request = job_service_pb2.RunJobRequest(name=f"namespaces/{namespace}/jobs/long")
            return (await jobs.RunJob(request)).execution.name

        first, second, elsewhere = await run("busy"), await run("busy"), await run("free")

        async def get(name: str) -> execution_pb2.Execution:
            return (
                await executions.GetExecution(execution_service_pb2.GetExecutionRequest(name=name))
            ).execution

        running = {execution_pb2.EXECUTION_STATE_RUNNING}
        await wait_state(executions, first, running)
        # Another namespace is not held up by this one's limit.
        await wait_state(executions, elsewhere, running)
        assert (await get(second)).state == execution_pb2.EXECUTION_STATE_QUEUED
        done = await wait_state(executions, second, ENDED)
        before = await get(first)
        assert done.state == before.state == execution_pb2.EXECUTION_STATE_SUCCEEDED
        # The second started only once the first had ended.
        assert done.start_time.ToDatetime() >= before.end_time.ToDatetime()


@pytest.mark.postgres
async def test_max_running_per_namespace_holds_across_replicas(
    fresh_database_url: Callable[[str], str],
) -> None:
    url = fresh_database_url("postgres")
    async with serving(url, max_running_per_namespace=1) as channel:
        jobs, executions = JobServiceStub(channel), ExecutionServiceStub(channel)
        await create_job(jobs, "shared", "long", parameters={"sleep_seconds": 2})

        async def run() -> str:
            request = job_service_pb2.RunJobRequest(name="namespaces/shared/jobs/long")
            return (await jobs.RunJob(request)).execution.name

        first = await run()
        await wait_state(executions, first, {execution_pb2.EXECUTION_STATE_RUNNING})
        # A second replica with free slots starts now; it must leave the second run waiting too.
        async with serving(url, max_running_per_namespace=1):
            second = await run()
            done = await wait_state(executions, second, ENDED, within=30)
        before = await wait_state(executions, first, ENDED)
        assert done.state == before.state == execution_pb2.EXECUTION_STATE_SUCCEEDED
        assert done.start_time.ToDatetime() >= before.end_time.ToDatetime()


async def test_a_namespace_at_its_limit_does_not_hold_up_the_others(database_url: str) -> None:
    # More QUEUED runs in "busy" than a worker looks at in one claim, all due before the other's.
    async with serving(database_url, max_running_per_namespace=1, worker_slots=4) as channel:
        jobs, executions = JobServiceStub(channel), ExecutionServiceStub(channel)
        await create_job(jobs, "busy", "long", parameters={"sleep_seconds": 30})
        await create_job(jobs, "free", "quick")
        for _ in range(40):
            await jobs.RunJob(job_service_pb2.RunJobRequest(name="namespaces/busy/jobs/long"))
        quick = await jobs.RunJob(job_service_pb2.RunJobRequest(name="namespaces/free/jobs/quick"))
        done = await wait_state(executions, quick.execution.name, ENDED)
        assert done.state == execution_pb2.EXECUTION_STATE_SUCCEEDED
        listed = await executions.ListExecutions(
            execution_service_pb2.ListExecutionsRequest(parent="namespaces/busy", page_size=100)
        )
        states = [e.state for e in listed.executions]
        assert states.count(execution_pb2.EXECUTION_STATE_RUNNING) == 1
        assert states.count(execution_pb2.EXECUTION_STATE_QUEUED) == 39


async def test_output_over_max_output_bytes_is_truncated_and_flagged(
    fresh_database_url: Callable[[str], str],
) -> None:
    async with serving(fresh_database_url("sqlite"), max_output_bytes=1000) as channel:
        jobs, executions = JobServiceStub(channel), ExecutionServiceStub(channel)
        script = "for i in $(seq 1 500); do echo line-$i; done"
        await create_job(
            jobs, "out", "chatty", executor="shell", parameters={"shell": True, "command": script}
        )
        started = await jobs.RunJob(job_service_pb2.RunJobRequest(name="namespaces/out/jobs/chatty"))
        done = await wait_state(executions, started.execution.name, ENDED)
        assert done.state == execution_pb2.EXECUTION_STATE_SUCCEEDED
        assert done.output_truncated
        assert len(done.output.encode()) == 1000
        assert done.output.startswith("line-1\nline-2\n")
        streamed = [
            chunk.data
            async for chunk in executions.StreamExecutionLogs(
                execution_service_pb2.StreamExecutionLogsRequest(name=started.execution.name)
            )
        ]
        assert "".join(streamed) == done.output

        async def short() -> execution_pb2.Execution | None:
            await create_job(jobs, "out", "quiet", executor="shell", parameters={"argv": ["echo", "hi"]})
            run = await jobs.RunJob(job_service_pb2.RunJobRequest(name="namespaces/out/jobs/quiet"))
            return await wait_state(executions, run.execution.name, ENDED)

        quiet = await eventually(short, 15, "a short run")
        assert (quiet.output, quiet.output_truncated) == ("hi\n", False)


def test_apply_past_the_limit_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = start_server(f"sqlite:///{tmp_path / 'cronwire.db'}", tmp_path, "--max-jobs-per-namespace", "2")
    try:
        plan = tmp_path / "jobs.yaml"
        plan.write_text(
            "namespace: applied\njobs:\n"
            + "".join(f"  - name: job-{n}\n    executor: noop\n" for n in range(3))
        )
        assert main(["--server", server.target, "apply", "-f", str(plan)]) != 0
        assert "--max-jobs-per-namespace" in capsys.readouterr().err
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-message-bytes", "100"], "--max-message-bytes must be at least 65536"),
        (["--max-jobs-per-namespace", "-1"], "argument --max-jobs-per-namespace: must not be negative"),
        (
            ["--max-running-per-namespace", "many"],
            "argument --max-running-per-namespace: 'many' is not a whole number",
        ),
    ],
)
def test_unusable_limits_stop_the_server_at_start(tmp_path: Path, flags: list[str], message: str) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "cronwire_server", "--listen", "127.0.0.1:0", *flags],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode != 0
    assert message in finished.stderr
