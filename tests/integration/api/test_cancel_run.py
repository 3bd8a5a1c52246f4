"""CancelExecution cancels the run, not one attempt: cancelling an attempt that already ended
cancels the retry queued or running after it, and a cancelled run is not retried again."""

from __future__ import annotations

from pathlib import Path

from cronwire.v1 import execution_pb2, execution_service_pb2
from cronwire.v1.execution_service_pb2_grpc import ExecutionServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from tests.integration.api.test_execution_service import ENDED, eventually, make_job, run, wait_state
from tests.integration.api.test_run_control import list_executions

CANCELLED = execution_pb2.EXECUTION_STATE_CANCELLED
FAILED = execution_pb2.EXECUTION_STATE_FAILED
QUEUED = execution_pb2.EXECUTION_STATE_QUEUED
RUNNING = execution_pb2.EXECUTION_STATE_RUNNING


async def attempt(
    executions: ExecutionServiceStub, job: str, number: int, states: set[int]
) -> execution_pb2.Execution:
    async def check() -> execution_pb2.Execution | None:
        found = [e for e in await list_executions(executions, job=job) if e.attempt == number]
        return found[0] if found and found[0].state in states else None

    return await eventually(check, 15, f"attempt {number} of {job} in {states}")


async def cancel(executions: ExecutionServiceStub, name: str) -> execution_pb2.Execution:
    request = execution_service_pb2.CancelExecutionRequest(name=name, reason="not today")
    return (await executions.CancelExecution(request)).execution


async def test_cancelling_an_ended_attempt_cancels_its_queued_retry(
    jobs: JobServiceStub, executions: ExecutionServiceStub
) -> None:
    job = await make_job(
        jobs,
        "flaky",
        executor="shell",
        parameters={"argv": ["false"]},
        retryPolicy={"maxAttempts": 3, "initialBackoff": "3600s"},
    )
    first = await run(jobs, job)
    assert (await wait_state(executions, first.name, ENDED)).state == FAILED
    retry = await attempt(executions, job, 2, {QUEUED})

    cancelled = await cancel(executions, first.name)
    # The response names the attempt cancelled: the retry, CANCELLED at once with its reason.
    assert (cancelled.name, cancelled.attempt, cancelled.state) == (retry.name, 2, CANCELLED)
    assert "not today" in cancelled.error
    assert cancelled.first_attempt == first.name
    got = await executions.GetExecution(execution_service_pb2.GetExecutionRequest(name=retry.name))
    assert got.execution.state == CANCELLED
    # The run is over: attempt 1 keeps its outcome, and no attempt 3 is queued.
    found = {e.attempt: e.state for e in await list_executions(executions, job=job)}
    assert found == {1: FAILED, 2: CANCELLED}
    # Cancelling again changes nothing.
    again = await cancel(executions, first.name)
    assert again.name == first.name
    assert again.state == FAILED


async def test_cancelling_an_ended_attempt_stops_its_running_retry(
    jobs: JobServiceStub, executions: ExecutionServiceStub, tmp_path: Path
) -> None:
    marker = tmp_path / "tried"
    script = f'if [ -e "{marker}" ]; then exec sleep 60; fi; touch "{marker}"; exit 1'
    job = await make_job(
        jobs,
        "second-sleeps",
        executor="shell",
        parameters={"argv": ["sh", "-c", script]},
        retryPolicy={"maxAttempts": 3, "initialBackoff": "0.1s"},
    )
    first = await run(jobs, job)
    assert (await wait_state(executions, first.name, ENDED)).state == FAILED
    retry = await attempt(executions, job, 2, {RUNNING})

    cancelled = await cancel(executions, first.name)
    assert (cancelled.name, cancelled.attempt) == (retry.name, 2)
    assert cancelled.state in (RUNNING, CANCELLED)
    stopped = await wait_state(executions, retry.name, ENDED, within=15)
    assert stopped.state == CANCELLED
    assert "not today" in stopped.error
    found = {e.attempt: e.state for e in await list_executions(executions, job=job)}
    assert found == {1: FAILED, 2: CANCELLED}
