"""The noop executor (records its arguments, sleeps if asked) and the lookup of runners by kind."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cronwire_server.core.model import ExecutionState
from cronwire_server.executors.noop import NoopRunner
from cronwire_server.executors.runners import runner_for
from cronwire_server.executors.runtime import RunOutcome, RunRequest
from cronwire_server.executors.shell import ShellRunner

BOUND = 3.0


def request(parameters: dict[str, Any], *, timeout: float | None = None) -> RunRequest:
    return RunRequest(
        execution_name="namespaces/ops/executions/e-1",
        job_name="namespaces/ops/jobs/try",
        parameters=parameters,
        arguments={"date": "2025-03-30", "tables": ["a", "b"]},
        scheduled_time=datetime(2025, 3, 30, 1, 30, tzinfo=UTC),
        attempt=1,
        timeout=timedelta(seconds=timeout) if timeout is not None else None,
    )


async def run(req: RunRequest, cancel: asyncio.Event | None = None) -> RunOutcome:
    return await asyncio.wait_for(NoopRunner().run(req, cancel or asyncio.Event()), BOUND)


async def test_noop_succeeds_with_its_arguments_and_parameters() -> None:
    outcome = await run(request({}))
    assert outcome == RunOutcome(
        ExecutionState.SUCCEEDED,
        result={"arguments": {"date": "2025-03-30", "tables": ["a", "b"]}, "parameters": {}},
    )


async def test_noop_sleeps() -> None:
    started = time.monotonic()
    outcome = await run(request({"sleep_seconds": 0.2}, timeout=1.0))
    assert time.monotonic() - started >= 0.2
    assert outcome.state is ExecutionState.SUCCEEDED
    assert outcome.result["parameters"] == {"sleep_seconds": 0.2}


async def test_noop_sleep_is_cut_short_by_cancel() -> None:
    cancel = asyncio.Event()
    task = asyncio.ensure_future(run(request({"sleep_seconds": 100}), cancel))
    # The runner is sleeping: it has not finished on its own.
    done, _ = await asyncio.wait({task}, timeout=0.05)
    assert not done
    started = time.monotonic()
    cancel.set()
    outcome = await task
    assert time.monotonic() - started < 0.5
    assert outcome == RunOutcome(ExecutionState.CANCELLED, error="cancelled")


async def test_noop_cancelled_before_it_starts() -> None:
    cancel = asyncio.Event()
    cancel.set()
    assert await run(request({}), cancel) == RunOutcome(ExecutionState.CANCELLED, error="cancelled")


async def test_noop_sleep_is_cut_short_by_the_timeout() -> None:
    started = time.monotonic()
    outcome = await run(request({"sleep_seconds": 100}, timeout=0.2))
    assert 0.2 <= time.monotonic() - started < 1.0
    assert outcome == RunOutcome(ExecutionState.TIMED_OUT, error="timed out after 0.2s")


async def test_noop_within_its_timeout_succeeds() -> None:
    outcome = await run(request({"sleep_seconds": 0.05}, timeout=1.0))
    assert outcome.state is ExecutionState.SUCCEEDED


async def test_worker_task_cancellation_propagates() -> None:
    task = asyncio.ensure_future(NoopRunner().run(request({"sleep_seconds": 100}), asyncio.Event()))
    done, _ = await asyncio.wait({task}, timeout=0.05)
    assert not done
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, BOUND)


def test_runner_for_each_kind_with_a_runner() -> None:
    assert isinstance(runner_for("shell"), ShellRunner)
    assert isinstance(runner_for("noop"), NoopRunner)


@pytest.mark.parametrize("kind", ["nope", ""])
def test_runner_for_a_kind_without_one(kind: str) -> None:
    with pytest.raises(LookupError, match=f"no runner for executor kind '{kind}'"):
        runner_for(kind)
