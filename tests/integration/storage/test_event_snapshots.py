"""What an execution's events hold: the run as it was at each change of its state, stored without
what the event's own row holds and without the columns still at their default, and read whole."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from cronwire_server.core.model import (
    EventFilter,
    EventType,
    Execution,
    ExecutionState,
    Job,
    RetryPolicy,
)
from cronwire_server.executors.runtime import RunOutcome
from cronwire_server.storage.records import execution_values
from cronwire_server.storage.sql_store import SqlStore
from cronwire_server.storage.tables import events
from cronwire_server.workers import plan_retry

NS = "snapshots"
WORKER = "host:1:abc"
LEASE = timedelta(seconds=60)


async def stored_snapshots(store: SqlStore) -> dict[tuple[str, str], dict[str, Any]]:
    """Each execution event's snapshot as stored, by (resource, type)."""
    async with store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(events.c.resource, events.c.type, events.c.snapshot))).all()
    return {(r.resource, r.type): r.snapshot["execution"] for r in rows if r.type.startswith("execution_")}


async def test_each_event_of_a_run_carries_it_as_it_was(store: SqlStore) -> None:
    job = Job(
        namespace=NS,
        id="flaky",
        executor="noop",
        parameters={},
        retry_policy=RetryPolicy(max_attempts=2),
    )
    await store.create_job(job)
    queued = await store.run_job(NS, job.id, {"day": "2026-12-06"})  # written from Python
    (claimed,) = await store.claim_executions(WORKER, 1, LEASE)  # by the claim's statement
    (failed,) = await store.finish_executions(  # by the finish's, with a retry queued
        [(claimed, RunOutcome(ExecutionState.FAILED, exit_code=3, output="out\n", error="boom"))],
        WORKER,
        plan_retry,
    )
    assert failed is not None
    await store.sequence_events(100)
    read = await store.read_events(EventFilter(namespace=NS, job_id=job.id), after=0, limit=100)
    by_type = {(e.resource, e.type): e.snapshot for e in read}

    as_queued = by_type[(queued.name, EventType.EXECUTION_QUEUED)]
    as_started = by_type[(queued.name, EventType.EXECUTION_STARTED)]
    as_failed = by_type[(queued.name, EventType.EXECUTION_FAILED)]
    assert as_queued == dataclasses.replace(queued, output="")
    assert as_started == dataclasses.replace(claimed.execution, output="")
    # The run as it ended: every column but its output, which no event carries.
    stored = await store.get_execution(NS, queued.id)
    assert as_failed == dataclasses.replace(stored, output="")
    assert isinstance(as_failed, Execution)
    assert (as_failed.exit_code, as_failed.error, as_failed.worker) == (3, "boom", WORKER)
    assert as_failed.arguments == {"day": "2026-12-06"}

    assert by_type[(queued.name, EventType.EXECUTION_RETRYING)] == as_failed
    # The next attempt, queued by the finish's transaction.
    retry = next(
        e for e in read if e.type is EventType.EXECUTION_QUEUED and e.resource != queued.name
    ).snapshot
    assert isinstance(retry, Execution)
    assert (retry.attempt, retry.first_attempt_id, retry.parent_execution_id) == (2, queued.id, queued.id)
    assert retry == dataclasses.replace(await store.get_execution(NS, retry.id), output="")

    # Stored, each leaves out what its event row holds and each column at its default: the
    # output, an error not set, attempt 1...; what the run changed stays.
    snapshots = await stored_snapshots(store)
    for key in ("namespace", "id", "job_id", "schedule_id", "output", "callback_state", "backfill_id"):
        assert all(key not in s for s in snapshots.values()), key
    assert "error" not in snapshots[(queued.name, EventType.EXECUTION_STARTED.value)]
    assert "attempt" not in snapshots[(queued.name, EventType.EXECUTION_FAILED.value)]
    ended = snapshots[(queued.name, EventType.EXECUTION_FAILED.value)]
    assert (ended["error"], ended["exit_code"], ended["state"]) == ("boom", 3, "failed")
    assert snapshots[(retry.name, EventType.EXECUTION_QUEUED.value)]["attempt"] == 2


async def test_an_event_stored_whole_reads_the_same(store: SqlStore) -> None:
    # Events written before snapshots left anything out hold every column of the run.
    await store.create_job(Job(namespace=NS, id="old", executor="noop", parameters={}))
    queued = await store.run_job(NS, "old", {})
    whole = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in execution_values(queued).items()}
    async with store.engine.begin() as conn:
        await conn.execute(
            events.update().where(events.c.resource == queued.name).values(snapshot={"execution": whole})
        )
    await store.sequence_events(100)
    where = EventFilter(namespace=NS, types=frozenset({EventType.EXECUTION_QUEUED}))
    (event,) = await store.read_events(where, after=0, limit=100)
    assert event.snapshot == dataclasses.replace(queued, output="")
