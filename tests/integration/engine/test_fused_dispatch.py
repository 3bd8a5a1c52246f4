"""While the local worker pool has free slots, the dispatcher starts the ticks it creates itself:
inserted RUNNING with the pool's lease in the dispatch's transaction, run by the pool at once,
with no claim in between (their start time is their creation time). The rest queue as before."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from cronwire_server.core.model import (
    EventFilter,
    EventType,
    ExecutionState,
    IntervalSpec,
    Job,
    Page,
    Schedule,
)
from cronwire_server.dispatcher import Dispatcher
from cronwire_server.storage.base import ExecutionFilter
from cronwire_server.storage.sql_store import SqlStore
from cronwire_server.storage.tables import schedules
from cronwire_server.supervisor import Supervisor
from cronwire_server.workers import WorkerPool

NS = "fused"


async def due_schedules(store: SqlStore, job: Job, count: int) -> None:
    await store.create_job(job)
    for n in range(count):
        await store.create_schedule(
            Schedule(
                namespace=NS, id=f"{job.id}-{n}", job_id=job.id, trigger=IntervalSpec(timedelta(hours=1))
            )
        )
    async with store.engine.connect() as conn:
        past = datetime.now(UTC) - timedelta(seconds=1)
        await conn.execute(
            sa.update(schedules).where(schedules.c.job_id == job.id).values(next_fire_time=past)
        )


async def executions_of(store: SqlStore, job_id: str) -> list:  # type: ignore[type-arg]
    listed = await store.list_executions(NS, Page(size=100), ExecutionFilter(job_id=job_id))
    return list(listed.items)


async def test_ticks_start_in_the_dispatch_while_the_pool_has_room(store: SqlStore) -> None:
    await due_schedules(store, Job(namespace=NS, id="noop", executor="noop", parameters={}), 3)
    # A job with a concurrency limit needs a claim's decision: its tick is queued.
    await due_schedules(
        store, Job(namespace=NS, id="one", executor="noop", parameters={}, max_concurrency=1), 1
    )
    stopping = asyncio.Event()
    supervisor = Supervisor(stopping)
    pool = WorkerPool(store, slots=2)
    pool.start(supervisor, stopping)
    try:
        assert await Dispatcher(store, pool=pool).run_once() == 4
        deadline = time.monotonic() + 15
        while True:
            made = await executions_of(store, "noop") + await executions_of(store, "one")
            ran = [e for e in made if e.state is not ExecutionState.SKIPPED]  # ticks of the past
            if len(ran) == 4 and all(e.state is ExecutionState.SUCCEEDED for e in ran):
                break
            assert time.monotonic() < deadline, [(e.id, e.state) for e in ran]
            await asyncio.sleep(0.05)
        assert {e.worker for e in ran} == {pool.identity}
        fused = [e for e in ran if e.start_time == e.create_time]
        # As many as the pool had free slots, of the job that needs no decision; the others
        # were queued and claimed.
        assert len(fused) == 2
        assert {e.job_id for e in fused} == {"noop"}
        events = await store.read_events(EventFilter(namespace=NS), after=0, limit=1000)
        if not events:  # PostgreSQL numbers them first
            await store.sequence_events(1000)
            events = await store.read_events(EventFilter(namespace=NS), after=0, limit=1000)
        for execution in fused:
            types = [e.type for e in events if e.resource == execution.name]
            assert types == [
                EventType.EXECUTION_QUEUED,
                EventType.EXECUTION_STARTED,
                EventType.EXECUTION_SUCCEEDED,
            ]
    finally:
        stopping.set()
        await supervisor.stop(within=5)
        await pool.drain(5)
