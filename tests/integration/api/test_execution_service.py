"""RunJob and ExecutionService over a real channel, with the server's own dispatcher and workers."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import json_format

from cronwire.v1 import event_service_pb2, execution_pb2, execution_service_pb2, job_pb2, job_service_pb2
from cronwire.v1.event_service_pb2_grpc import EventServiceStub
from cronwire.v1.execution_service_pb2_grpc import ExecutionServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire_server.app import RunningServer
from tests.integration.api.test_job_service import expect_error
from tests.support import eventually, store_value

PARENT = "namespaces/runs"
T = TypeVar("T")
ENDED = {
    execution_pb2.EXECUTION_STATE_SUCCEEDED,
    execution_pb2.EXECUTION_STATE_FAILED,
    execution_pb2.EXECUTION_STATE_TIMED_OUT,
    execution_pb2.EXECUTION_STATE_CANCELLED,
}


async def make_job(jobs: JobServiceStub, job_id: str, **fields: Any) -> str:
    job = json_format.ParseDict(fields, job_pb2.Job())
    response = await jobs.CreateJob(job_service_pb2.CreateJobRequest(parent=PARENT, job_id=job_id, job=job))
    return response.job.name


async def run(jobs: JobServiceStub, job: str, **fields: Any) -> execution_pb2.Execution:
    request = json_format.ParseDict({"name": job, **fields}, job_service_pb2.RunJobRequest())
    return (await jobs.RunJob(request)).execution


async def wait_state(
    executions: ExecutionServiceStub, name: str, states: set[int], within: float = 15
) -> execution_pb2.Execution:
    async def check() -> execution_pb2.Execution | None:
        got = await executions.GetExecution(execution_service_pb2.GetExecutionRequest(name=name))
        return got.execution if got.execution.state in states else None

    return await eventually(check, within, f"{name} to reach {states}")


async def test_run_job_runs_a_shell_command_and_records_its_output(
    jobs: JobServiceStub, executions: ExecutionServiceStub
) -> None:
    job = await make_job(
        jobs,
        "greet",
        executor="shell",
        parameters={"argv": ["sh", "-c", 'echo "hi $CRONWIRE_ARGUMENTS"; exit 3']},
    )
    queued = await run(jobs, job, arguments={"who": "you"})
    assert queued.state == execution_pb2.EXECUTION_STATE_QUEUED
    assert queued.trigger == execution_pb2.EXECUTION_TRIGGER_RUN_NOW
    assert queued.job == job
    ended = await wait_state(executions, queued.name, ENDED)
    assert ended.state == execution_pb2.EXECUTION_STATE_FAILED
    assert ended.exit_code == 3
    assert ended.output == 'hi {"who": "you"}\n'
    assert ended.error == "exit code 3"
    assert ended.worker
    assert ended.attempt == 1
    assert ended.start_time.ToDatetime() >= ended.scheduled_time.ToDatetime()
    assert json_format.MessageToDict(ended.arguments) == {"who": "you"}


async def test_run_job_request_id_returns_the_same_execution(jobs: JobServiceStub) -> None:
    job = await make_job(jobs, "once", executor="noop")
    first, second = await asyncio.gather(run(jobs, job, requestId="r-1"), run(jobs, job, requestId="r-1"))
    assert first.name == second.name


async def test_run_job_of_a_missing_job_is_not_found(jobs: JobServiceStub) -> None:
    _, reason = await expect_error(run(jobs, f"{PARENT}/jobs/nobody"), grpc.StatusCode.NOT_FOUND)
    assert reason == "JOB_NOT_FOUND"


async def test_failed_attempts_are_retried_with_backoff(
    jobs: JobServiceStub, executions: ExecutionServiceStub
) -> None:
    job = await make_job(
        jobs,
        "flaky",
        executor="shell",
        parameters={"argv": ["false"]},
        retryPolicy={"maxAttempts": 3, "initialBackoff": "0.2s", "backoffMultiplier": 2},
    )
    first = await run(jobs, job)

    async def three_attempts() -> list[execution_pb2.Execution] | None:
        listed = await executions.ListExecutions(
            execution_service_pb2.ListExecutionsRequest(parent=PARENT, job=job)
        )
        done = [e for e in listed.executions if e.state in ENDED]
        return list(listed.executions) if len(done) == 3 else None

    attempts = sorted(await eventually(three_attempts, 20, "three attempts"), key=lambda e: e.attempt)
    assert [e.attempt for e in attempts] == [1, 2, 3]
    assert [e.state for e in attempts] == [execution_pb2.EXECUTION_STATE_FAILED] * 3
    assert [e.trigger for e in attempts[1:]] == [execution_pb2.EXECUTION_TRIGGER_RETRY] * 2
    assert {e.first_attempt for e in attempts[1:]} == {first.name}
    assert attempts[2].parent_execution == attempts[1].name
    gap = attempts[2].scheduled_time.ToDatetime() - attempts[1].end_time.ToDatetime()
    assert timedelta(seconds=0.35) <= gap <= timedelta(seconds=0.5)


async def test_timeout_stops_the_run(jobs: JobServiceStub, executions: ExecutionServiceStub) -> None:
    job = await make_job(jobs, "slow", executor="shell", parameters={"argv": ["sleep", "30"]}, timeout="0.5s")
    ended = await wait_state(executions, (await run(jobs, job)).name, ENDED)
    assert ended.state == execution_pb2.EXECUTION_STATE_TIMED_OUT
    assert ended.error == "timed out after 0.5s"


async def test_cancel_a_queued_and_a_running_execution(
    jobs: JobServiceStub, executions: ExecutionServiceStub
) -> None:
    job = await make_job(
        jobs, "long", executor="shell", parameters={"argv": ["sleep", "30"]}, maxConcurrency=1
    )
    running = await run(jobs, job)
    await wait_state(executions, running.name, {execution_pb2.EXECUTION_STATE_RUNNING})
    waiting = await run(jobs, job)  # max_concurrency 1: it stays queued
    cancelled = await executions.CancelExecution(
        execution_service_pb2.CancelExecutionRequest(name=waiting.name, reason="not needed")
    )
    assert cancelled.execution.state == execution_pb2.EXECUTION_STATE_CANCELLED
    assert cancelled.execution.error == "cancelled: not needed"

    started = time.monotonic()
    await executions.CancelExecution(execution_service_pb2.CancelExecutionRequest(name=running.name))
    ended = await wait_state(executions, running.name, ENDED, within=10)
    assert ended.state == execution_pb2.EXECUTION_STATE_CANCELLED
    assert time.monotonic() - started < 3.0
    again = await executions.CancelExecution(execution_service_pb2.CancelExecutionRequest(name=running.name))
    assert again.execution.state == execution_pb2.EXECUTION_STATE_CANCELLED


async def test_list_filters_and_pages_newest_first(
    jobs: JobServiceStub, executions: ExecutionServiceStub
) -> None:
    a = await make_job(jobs, "a", executor="noop")
    b = await make_job(jobs, "b", executor="noop")
    names = [(await run(jobs, job)).name for job in (a, b, a, b, a)]
    for name in names:
        await wait_state(executions, name, ENDED)
    seen: list[str] = []
    token = ""
    while True:
        page = await executions.ListExecutions(
            execution_service_pb2.ListExecutionsRequest(parent=PARENT, page_size=2, page_token=token)
        )
        seen += [e.name for e in page.executions]
        assert all(e.output == "" for e in page.executions)
        token = page.next_page_token
        if not token:
            break
    assert seen == names[::-1]
    only_a = await executions.ListExecutions(
        execution_service_pb2.ListExecutionsRequest(parent=PARENT, job=a)
    )
    assert [e.name for e in only_a.executions] == [names[4], names[2], names[0]]
    succeeded = await executions.ListExecutions(
        execution_service_pb2.ListExecutionsRequest(
            parent=PARENT, states=[execution_pb2.EXECUTION_STATE_SUCCEEDED], job=b
        )
    )
    assert len(succeeded.executions) == 2
    future = execution_service_pb2.ListExecutionsRequest(parent=PARENT)
    future.start_time.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    assert list((await executions.ListExecutions(future)).executions) == []


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"parent": "nope"}, "parent"),
        ({"parent": PARENT, "pageSize": -2}, "page_size"),
        ({"parent": PARENT, "job": "namespaces/other/jobs/x"}, "job"),
        ({"parent": PARENT, "states": ["EXECUTION_STATE_UNSPECIFIED"]}, "states[0]"),
    ],
)
async def test_bad_list_requests_name_the_field(
    executions: ExecutionServiceStub, request_fields: dict[str, Any], field: str
) -> None:
    request = json_format.ParseDict(request_fields, execution_service_pb2.ListExecutionsRequest())
    violations, _ = await expect_error(executions.ListExecutions(request), grpc.StatusCode.INVALID_ARGUMENT)
    assert field in violations


async def test_get_of_a_missing_execution_is_not_found(executions: ExecutionServiceStub) -> None:
    _, reason = await expect_error(
        executions.GetExecution(
            execution_service_pb2.GetExecutionRequest(name=f"{PARENT}/executions/nothing")
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert reason == "EXECUTION_NOT_FOUND"


async def test_what_job_code_produces_that_no_database_holds_is_stored_and_later_runs_still_end(
    jobs: JobServiceStub, executions: ExecutionServiceStub
) -> None:
    # PostgreSQL holds no NUL in text or JSON, and no UTF-8 a lone surrogate: such an outcome once
    # failed to be written, again and again, and no later outcome of the replica was written either.
    printed = await make_job(
        jobs, "prints-nul", executor="shell", parameters={"argv": ["printf", "a\\000b\\n"]}
    )
    returned = await make_job(
        jobs,
        "returns-nul",
        executor="python",
        parameters={"callable": "json:loads", "args": ['{"a\\u0000": ["b\\u0000", "c\\ud800", 1.5]}']},
    )
    runs = [await run(jobs, job) for job in (printed, returned)]
    later = await run(jobs, await make_job(jobs, "later", executor="noop"))

    ended = [await wait_state(executions, queued.name, ENDED) for queued in [*runs, later]]
    assert [e.state for e in ended] == [
        execution_pb2.EXECUTION_STATE_SUCCEEDED,
        execution_pb2.EXECUTION_STATE_SUCCEEDED,
        execution_pb2.EXECUTION_STATE_SUCCEEDED,
    ]
    assert ended[0].output == "a\ufffdb\n"
    assert json_format.MessageToDict(ended[1].result) == {"a\ufffd": ["b\ufffd", "c\ufffd", 1.5]}


async def test_a_number_too_large_for_a_double_is_stored_as_null(
    jobs: JobServiceStub, executions: ExecutionServiceStub, events: EventServiceStub
) -> None:
    # JSON's numbers are unbounded and Python reads them exactly, but protobuf's are doubles: a
    # result holding 10**400 was stored, and every read of its execution failed with INTERNAL, and
    # so did (on PostgreSQL) the stream of every watcher sent its end event.
    watch = events.WatchEvents(event_service_pb2.WatchEventsRequest())
    huge, largest = "1" + "0" * 400, str(2**1023)
    document = f'{{"huge": {huge}, "negative": -{huge}, "largest": {largest}, "in": [{huge}, 1]}}'
    job = await make_job(
        jobs, "huge", executor="python", parameters={"callable": "json:loads", "args": [document]}
    )
    ended = await wait_state(executions, (await run(jobs, job)).name, ENDED)
    assert ended.state == execution_pb2.EXECUTION_STATE_SUCCEEDED, ended.error
    result = json_format.MessageToDict(ended.result)
    assert result == {"huge": None, "negative": None, "largest": float(2**1023), "in": [None, 1]}
    listed = await executions.ListExecutions(execution_service_pb2.ListExecutionsRequest(parent=PARENT))
    assert ended.name in [e.name for e in listed.executions]
    async with asyncio.timeout(10):
        async for response in watch:
            ends = [
                e for e in response.events if e.execution.name == ended.name and e.execution.end_time.seconds
            ]
            if ends:
                assert json_format.MessageToDict(ends[0].execution.result) == result
                break
    watch.cancel()


async def test_a_number_too_large_for_a_double_stored_before_is_read_as_null(
    server: RunningServer, jobs: JobServiceStub, executions: ExecutionServiceStub
) -> None:
    # A row written before results were made storable still holds the number: reads send null.
    job = await make_job(jobs, "noop", executor="noop")
    ended = await wait_state(executions, (await run(jobs, job)).name, ENDED)
    huge = {"huge": 10**400, "small": 2}
    await store_value(server.store, "executions", "result", huge, f"id = '{ended.name.rsplit('/', 1)[1]}'")
    got = await executions.GetExecution(execution_service_pb2.GetExecutionRequest(name=ended.name))
    assert json_format.MessageToDict(got.execution.result) == {"huge": None, "small": 2}


@pytest.mark.parametrize("depth", [32, 33, 900])
async def test_a_result_nested_too_deep_to_return_is_stored_as_omitted(
    jobs: JobServiceStub, executions: ExecutionServiceStub, depth: int
) -> None:
    # Protobuf reads a message at most 100 deep: a result nested 60 levels was stored, and every
    # read of its execution failed with INTERNAL; one nested 900 levels never ended its run.
    job = await make_job(
        jobs,
        "deep",
        executor="python",
        parameters={"callable": "json:loads", "args": ["[" * depth + "]" * depth]},
    )
    ended = await wait_state(executions, (await run(jobs, job)).name, ENDED)
    assert ended.state == execution_pb2.EXECUTION_STATE_SUCCEEDED, ended.error
    result = json_format.MessageToDict(ended.result)
    if depth <= 32:
        assert json.dumps(result) == "[" * depth + "]" * depth
    else:
        assert result == {"omitted": "a result nested more than 32 levels deep"}
