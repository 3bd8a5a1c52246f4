"""A run cancelled while an attempt runs is not retried, even when that attempt ends FAILED on its
own before its worker hears of the cancellation."""

from __future__ import annotations

from datetime import timedelta

from cronwire_server.core.model import ExecutionState, Job, RetryPolicy
from cronwire_server.executors.runtime import RunOutcome
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


async def test_a_run_released_at_shutdown_after_a_cancel_request_ends_cancelled(store: SqlStore) -> None:
    """A draining replica hands its unfinished runs back to the queue; one whose cancellation was
    requested is not handed back to run again: it ends CANCELLED."""
    await store.create_job(Job(namespace=NS, id="job", executor="noop", parameters={}))
    await store.create_job(Job(namespace=NS, id="other", executor="noop", parameters={}))
    await store.run_job(NS, "job", {})
    await store.run_job(NS, "other", {})
    claimed = await store.claim_executions(WORKER, 2, timedelta(seconds=60))
    by_job = {c.execution.job_id: c.execution for c in claimed}
    await store.cancel_execution(NS, by_job["job"].id, "not today")

    await store.release_executions(WORKER, [c.execution.id for c in claimed])

    cancelled = await store.get_execution(NS, by_job["job"].id)
    assert (cancelled.state, cancelled.worker) == (ExecutionState.CANCELLED, "")
    assert cancelled.end_time is not None
    assert (await store.get_execution(NS, by_job["other"].id)).state is ExecutionState.QUEUED
    assert await store.claim_executions(WORKER, 2, timedelta(seconds=60)) != []
