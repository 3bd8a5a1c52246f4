"""A run cancelled while an attempt runs is not retried, even when that attempt ends FAILED on its
own before its worker hears of the cancellation."""

from __future__ import annotations

from datetime import timedelta

from cronwire_server.executors.runtime import RunOutcome
from cronwire_server.model import ExecutionState, Job, RetryPolicy
from cronwire_server.storage.base import ExecutionFilter, Page
from cronwire_server.storage.sql_store import SqlStore
from cronwire_server.workers import plan_retry

NS = "runs"
WORKER = "host:1:abc"


async def test_an_attempt_failing_after_its_run_was_cancelled_is_not_retried(store: SqlStore) -> None:
    retry = RetryPolicy(max_attempts=3, initial_backoff=timedelta(0))
    await store.create_job(Job(namespace=NS, id="job", executor="noop", parameters={}, retry_policy=retry))
    await store.run_job(NS, "job", {})
    (claimed,) = await store.claim_executions(WORKER, 1, timedelta(seconds=60))

    requested = await store.cancel_execution(NS, claimed.execution.id, "not today")
    assert requested.state is ExecutionState.RUNNING
    # The job fails by itself before the heartbeat carries the cancellation to its worker.
    failed = RunOutcome(ExecutionState.FAILED, exit_code=1, error="exit code 1")
    (ended,) = await store.finish_executions([(claimed, failed)], WORKER, plan_retry)
    assert ended is not None
    assert ended.state is ExecutionState.FAILED

    listing = await store.list_executions(NS, Page(10), ExecutionFilter(job_id="job"))
    assert [(e.attempt, e.state) for e in listing.items] == [(1, ExecutionState.FAILED)]
