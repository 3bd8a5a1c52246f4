"""How many statements the hot path sends, counted by a statement hook on the store's engine:
counts, not times, so they hold on any machine. Each set-based step is pinned here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine.interfaces import ExecuteStyle
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from cronwire_server.core.model import (
    EventFilter,
    EventType,
    Execution,
    ExecutionState,
    IntervalSpec,
    Job,
    Page,
    RetryPolicy,
    Schedule,
)
from cronwire_server.dispatcher import Dispatcher
from cronwire_server.executors.runtime import RunOutcome
from cronwire_server.storage import sql_queue
from cronwire_server.storage.base import ClaimedExecution, ExecutionFilter
from cronwire_server.storage.sql_engine import sync_url
from cronwire_server.storage.sql_queue import CLAIM_BATCH
from cronwire_server.storage.sql_store import SqlStore, open_store
from cronwire_server.workers import plan_retry
from tests.support import rows_read

NS = "counts"
WORKER = "host:1:abc"
LEASE = timedelta(seconds=60)
BATCH = 100
SEQUENCER_LOCK = 0x63726F6E77697265  # migration 0017's

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(fresh_database_url: Callable[[str], str]) -> AsyncIterator[SqlStore]:
    opened = await open_store(fresh_database_url("postgres"))
    yield opened
    await opened.close()


class Sent:
    """Every statement the store sends, BEGIN and COMMIT included; an executemany counts as
    many statements as it has parameter sets (the server runs each)."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.count = 0

    def __call__(self, *args: Any) -> None:
        statement, parameters, context, executemany = args[2:6]
        self.statements.append(statement)
        many = executemany and context.execute_style is ExecuteStyle.EXECUTEMANY
        self.count += len(parameters) if many else 1


@contextmanager
def counting(store: SqlStore) -> Iterator[Sent]:
    sent = Sent()
    engine = store.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", sent)
    try:
        yield sent
    finally:
        sa.event.remove(engine, "before_cursor_execute", sent)


async def running(store: SqlStore, job: Job, count: int) -> list[ClaimedExecution]:
    await store.create_job(job)
    for _ in range(count):
        await store.run_job(NS, job.id, {})
    claimed = await store.claim_executions(WORKER, count, LEASE)
    assert len(claimed) == count
    return claimed


async def all_events(store: SqlStore) -> list[Any]:
    await store.sequence_events(10_000)
    return await store.read_events(EventFilter(namespace=NS), after=0, limit=10_000)


async def test_finishing_a_batch_of_plain_outcomes_is_one_statement(store: SqlStore) -> None:
    claimed = await running(store, Job(namespace=NS, id="noop", executor="noop", parameters={}), BATCH)
    items = [(c, RunOutcome(ExecutionState.SUCCEEDED, exit_code=0, output="ok\n")) for c in claimed]
    with counting(store) as sent:
        ended = await store.finish_executions(items, WORKER, plan_retry)
    assert sent.count == 1, sent.statements
    assert [e.id if e else None for e in ended] == [c.execution.id for c in claimed]
    assert {e.state if e else None for e in ended} == {ExecutionState.SUCCEEDED}
    # Its events came with it: one per outcome, with the ended execution as snapshot.
    finished = [e for e in await all_events(store) if e.type is EventType.EXECUTION_SUCCEEDED]
    assert sorted(e.resource for e in finished) == sorted(c.execution.name for c in claimed)
    snapshot = finished[0].snapshot
    assert isinstance(snapshot, Execution)
    assert snapshot.state is ExecutionState.SUCCEEDED
    assert snapshot.end_time is not None
    stored = await store.get_execution(NS, claimed[0].execution.id)
    assert (stored.output, stored.exit_code, stored.worker) == ("ok\n", 0, WORKER)


async def test_a_run_whose_lease_passed_on_is_not_finished_and_the_others_are(store: SqlStore) -> None:
    claimed = await running(store, Job(namespace=NS, id="noop", executor="noop", parameters={}), 3)
    items = [(c, RunOutcome(ExecutionState.SUCCEEDED)) for c in claimed]
    ended = await store.finish_executions(items, "another:2:def", plan_retry)
    assert ended == [None, None, None]
    ended = await store.finish_executions(items, WORKER, plan_retry)
    assert all(e is not None and e.state is ExecutionState.SUCCEEDED for e in ended)


async def test_a_retry_costs_statements_only_for_the_run_retried(store: SqlStore) -> None:
    plain = await running(store, Job(namespace=NS, id="noop", executor="noop", parameters={}), BATCH)
    retried = Job(
        namespace=NS, id="flaky", executor="noop", parameters={}, retry_policy=RetryPolicy(max_attempts=2)
    )
    (flaky,) = await running(store, retried, 1)
    items = [(c, RunOutcome(ExecutionState.SUCCEEDED)) for c in plain]
    items.append((flaky, RunOutcome(ExecutionState.FAILED, exit_code=1, error="boom")))
    with counting(store) as sent:
        ended = await store.finish_executions(items, WORKER, plan_retry)
    # BEGIN, the batch, the retry's row, its NOTIFY, the retry's events, COMMIT: not one per run.
    assert sent.count <= 6, sent.statements
    assert ended[-1] is not None
    assert ended[-1].state is ExecutionState.FAILED
    queued = await store.list_executions(
        NS, Page(size=10), ExecutionFilter(job_id="flaky", states=(ExecutionState.QUEUED,))
    )
    assert [(e.attempt, e.parent_execution_id) for e in queued.items] == [(2, flaky.execution.id)]
    types = [e.type for e in await all_events(store) if e.resource == flaky.execution.name]
    assert types[-2:] == [EventType.EXECUTION_FAILED, EventType.EXECUTION_RETRYING]


async def test_claiming_a_batch_is_one_statement(store: SqlStore) -> None:
    await store.create_job(Job(namespace=NS, id="noop", executor="noop", parameters={}))
    queued = [await store.run_job(NS, "noop", {}) for _ in range(BATCH)]
    with counting(store) as sent:
        claimed = await store.claim_executions(WORKER, BATCH, LEASE)
    assert sent.count == 1, sent.statements
    assert sorted(c.execution.id for c in claimed) == sorted(e.id for e in queued)
    assert {(c.execution.state, c.execution.worker, c.job.id) for c in claimed} == {
        (ExecutionState.RUNNING, WORKER, "noop")
    }
    first = claimed[0].execution
    assert first.start_time is not None
    stored = await store.get_execution(NS, first.id)
    assert stored.state is ExecutionState.RUNNING
    assert stored.start_time == first.start_time
    started = [e for e in await all_events(store) if e.type is EventType.EXECUTION_STARTED]
    assert sorted(e.resource for e in started) == sorted(e.name for e in queued)
    with counting(store) as sent:
        assert await store.claim_executions(WORKER, BATCH, LEASE) == []
    assert sent.count == 1, "an empty queue costs one statement too"


async def queue_of(store: SqlStore, count: int) -> None:
    await store.create_job(Job(namespace=NS, id="noop", executor="noop", parameters={}))
    for _ in range(count // 100):
        await asyncio.gather(*(store.run_job(NS, "noop", {}) for _ in range(100)))


async def executions_read_by_a_claim(engine: AsyncEngine, limit: int) -> int:
    """Rows of `executions` the plan of a claim of `limit` reads, planned on a session of `engine`
    (rolled back: nothing is claimed)."""
    async with engine.connect() as conn:
        plan = (
            await conn.execute(
                sa.text(f"EXPLAIN (ANALYZE, FORMAT JSON) {CLAIM_BATCH.element}"),
                {"limit": limit, "worker": WORKER, "lease": LEASE},
            )
        ).scalar_one()
        await conn.rollback()
    return sum(
        node["Actual Rows"] * node["Actual Loops"]
        for node in plan_nodes(plan[0]["Plan"])
        if node.get("Relation Name") == "executions"
    )


async def test_a_claim_reads_its_batch_not_the_whole_queue(store: SqlStore) -> None:
    # In a burst thousands are queued; a claim of a few must not read and sort them all.
    await queue_of(store, 2000)
    async with store.engine.connect() as conn:
        await conn.execute(sa.text("ANALYZE executions, jobs"))  # statistics that say so
        await conn.commit()
    assert await executions_read_by_a_claim(store.queue_engine, 16) <= 16 * 4


async def test_a_claim_reads_its_batch_whatever_the_planner_estimates(store: SqlStore) -> None:
    """With the queue's estimates far off (no statistics yet, or taken while it was empty), a
    bitmap scan of the whole queue and a sort cost the planner about what reading the index in due
    order does, and a growing queue tips it to the bitmap scan. Here the database's settings tip it
    (index scans off): the store's claims still read their batch by the index."""
    await queue_of(store, 2000)
    async with store.engine.connect() as conn:
        database = (await conn.execute(sa.text("SELECT current_database()"))).scalar_one()
        await conn.execute(sa.text(f'ALTER DATABASE "{database}" SET enable_indexscan = off'))
        await conn.commit()
    misled = create_async_engine(store.engine.url, poolclass=NullPool)  # a session as any other
    try:
        assert await executions_read_by_a_claim(misled, 16) >= 2000, "the planner is not misled"
    finally:
        await misled.dispose()
    assert await executions_read_by_a_claim(store.queue_engine, 16) <= 16 * 4
    claimed = await store.claim_executions(WORKER, 16, LEASE)
    assert len(claimed) == 16


async def test_a_finish_reads_its_batch_whatever_the_planner_estimates(store: SqlStore) -> None:
    """Thousands running (a burst, remote workers' long runs) while the table's statistics say
    few are (none taken yet, or taken at a quiet time): the planner then finds reading every
    running execution through their partial index as cheap as reading the batch by primary key.
    A finish of 16 reads its 16, on a session as any other."""
    async with store.engine.connect() as conn:
        # No statistics for the run: autovacuum would take them within a minute.
        await conn.execute(sa.text("ALTER TABLE executions SET (autovacuum_enabled = off)"))
        await conn.commit()
    await queue_of(store, 2000)
    taken: list[ClaimedExecution] = []
    while batch := await store.claim_executions(WORKER, BATCH, LEASE):
        taken += batch
    assert len(taken) == 2000
    items = [(c, RunOutcome(ExecutionState.SUCCEEDED)) for c in taken[:16]]
    plain = sa.create_engine(
        sync_url(store.engine.url.render_as_string(hide_password=False)), poolclass=NullPool
    )
    try:
        with plain.connect() as conn:
            ended = sql_queue.finish_batch(conn, items, WORKER)
            read = rows_read(conn, "executions")
            conn.rollback()
    finally:
        plain.dispose()
    assert all(e is not None and e.state is ExecutionState.SUCCEEDED for e in ended)
    assert read <= 16 * 4, f"{read} executions read to finish 16"


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from plan_nodes(child)


async def test_a_claim_that_needs_an_admission_decision_still_makes_it(store: SqlStore) -> None:
    """A job's concurrency limit at the head of the queue: the plain claim starts nothing and the
    admitting claim admits exactly the limit."""
    limited = Job(namespace=NS, id="limited", executor="noop", parameters={}, max_concurrency=2)
    await store.create_job(limited)
    for _ in range(5):
        await store.run_job(NS, "limited", {})
    claimed = await store.claim_executions(WORKER, BATCH, LEASE)
    assert len(claimed) == 2
    assert await store.claim_executions(WORKER, BATCH, LEASE) == []


def admitting(sent: Sent) -> None:
    """The statements of one claim that admits: the admission lock and the claim, sent in one
    round trip (no BEGIN, no COMMIT)."""
    assert len(sent.statements) == 2, sent.statements
    assert "pg_advisory_xact_lock" in sent.statements[0]
    assert "WITH picked" in sent.statements[1]


async def test_a_claim_that_admits_is_one_round_trip_and_keeps_every_limit(store: SqlStore) -> None:
    """A job's concurrency limit, a serial backfill (one tick at a time, in tick order) and plain
    runs in one queue; once the store knows the queue needs decisions, a claim is one round trip."""
    await store.create_job(Job(namespace=NS, id="limited", executor="noop", parameters={}, max_concurrency=2))
    await store.create_job(Job(namespace=NS, id="noop", executor="noop", parameters={}))
    schedule = await store.create_schedule(
        Schedule(namespace=NS, id="hourly", job_id="noop", trigger=IntervalSpec(timedelta(hours=1)))
    )
    base = datetime(2026, 1, 1, tzinfo=UTC)
    ticks = [base + timedelta(hours=h) for h in (3, 1, 2, 0)]
    backfilled = await store.backfill(schedule, ticks, serial=True, max_concurrency=0)
    limited = [await store.run_job(NS, "limited", {}) for _ in range(5)]
    plain = [await store.run_job(NS, "noop", {}) for _ in range(3)]

    first = await store.claim_executions(WORKER, BATCH, LEASE)
    ids = {c.execution.id for c in first}
    assert {e.id for e in plain} <= ids
    assert len(ids & {e.id for e in limited}) == 2
    serial = [c for c in first if c.execution.backfill_id]
    assert [c.execution.scheduled_time for c in serial] == [base]  # the first tick, alone
    assert len(first) == 3 + 2 + 1

    done = [c for c in first if c.execution.job_id == "limited"][:1] + serial
    await store.finish_executions(
        [(c, RunOutcome(ExecutionState.SUCCEEDED)) for c in done], WORKER, plan_retry
    )
    with counting(store) as sent:
        second = await store.claim_executions(WORKER, BATCH, LEASE)
    admitting(sent)
    assert sorted(
        (c.execution.job_id, c.execution.scheduled_time) for c in second if c.execution.backfill_id
    ) == [("noop", base + timedelta(hours=1))]
    assert len([c for c in second if c.execution.job_id == "limited"]) == 1
    assert len(second) == 2
    assert {e.backfill_id for e in backfilled} == {serial[0].execution.backfill_id}

    with counting(store) as sent:
        assert await store.claim_executions(WORKER, BATCH, LEASE) == []
    admitting(sent)


async def test_a_namespace_limit_is_kept_in_one_round_trip(store: SqlStore) -> None:
    for namespace in ("busy", "free"):
        await store.create_job(Job(namespace=namespace, id="noop", executor="noop", parameters={}))
        for _ in range(5):
            await store.run_job(namespace, "noop", {})
    with counting(store) as sent:
        claimed = await store.claim_executions(WORKER, BATCH, LEASE, namespace_limit=3)
    admitting(sent)
    assert sorted(c.execution.namespace for c in claimed) == ["busy"] * 3 + ["free"] * 3
    assert await store.claim_executions(WORKER, BATCH, LEASE, namespace_limit=3) == []


async def test_a_deleted_jobs_queued_run_fails_when_claimed(store: SqlStore) -> None:
    await store.create_job(Job(namespace=NS, id="gone", executor="noop", parameters={}))
    queued = await store.run_job(NS, "gone", {})
    async with store.engine.connect() as conn:  # as if deleted between its queueing and its claim
        await conn.execute(sa.text("DELETE FROM jobs WHERE id = 'gone'"))
    assert await store.claim_executions(WORKER, BATCH, LEASE) == []
    failed = await store.get_execution(NS, queued.id)
    assert (failed.state, failed.error) == (ExecutionState.FAILED, "the job was deleted before it ran")


async def test_replicas_claiming_at_once_never_pass_a_concurrency_limit(store: SqlStore) -> None:
    """Admitting claims of several replicas race on the same job: the RUNNING counts each decides
    on are never stale (each admits under the lock, with a snapshot taken once it holds it)."""
    await store.create_job(Job(namespace=NS, id="one", executor="noop", parameters={}, max_concurrency=1))
    for _ in range(40):
        await store.run_job(NS, "one", {})
    url = store.engine.url.render_as_string(hide_password=False)
    replicas = [store, await open_store(url), await open_store(url)]
    try:
        for _ in range(40):
            rounds = await asyncio.gather(
                *(
                    r.claim_executions(f"host:{n}:abc", 4, LEASE)
                    for n, r in enumerate(replicas)
                    for _ in (0, 1)
                )
            )
            started = [(n // 2, c) for n, claimed in enumerate(rounds) for c in claimed]
            assert len(started) == 1, [c.execution.id for _, c in started]
            n, claimed = started[0]
            await replicas[n].finish_executions(
                [(claimed, RunOutcome(ExecutionState.SUCCEEDED))], f"host:{n}:abc", plan_retry
            )
    finally:
        for replica in replicas[1:]:
            await replica.close()


async def test_a_dispatch_batch_is_one_transaction_of_four_statements(store: SqlStore) -> None:
    # The schedules read and locked, their activity read with the clock, then one statement for
    # the ticks, their events, the next fire times and the claimers' wake-up.
    await store.create_job(Job(namespace=NS, id="noop", executor="noop", parameters={}))
    for n in range(3):
        await store.create_schedule(
            Schedule(namespace=NS, id=f"s{n}", job_id="noop", trigger=IntervalSpec(timedelta(hours=1)))
        )
    async with store.engine.connect() as conn:  # due now
        await conn.execute(sa.text("UPDATE schedules SET next_fire_time = now() - interval '1 second'"))
        await conn.commit()
    url = store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as listener:
        await listener.execute("LISTEN cronwire_executions")
        with counting(store) as sent:
            assert await Dispatcher(store).run_once() == 3
        work = [s for s in sent.statements if s not in ("BEGIN", "COMMIT")]
        assert len(work) == 4, work  # the database's clock first
        assert sent.count == 6
        woken = [n.channel async for n in listener.notifies(timeout=5, stop_after=1)]
    assert woken == ["cronwire_executions"]
    async with store.engine.connect() as conn:
        later = (
            await conn.execute(sa.text("SELECT count(*) FROM schedules WHERE next_fire_time > now()"))
        ).scalar()
    assert later == 3


async def test_a_burst_of_due_schedules_costs_at_most_one_statement_per_execution(store: SqlStore) -> None:
    """Dispatch, claim (batches of a worker pool's 16 slots), finish (the same batches) and the
    numbering of every event they wrote: 1,000 noop executions from 1,000 due schedules."""
    count, slots = 1000, 16
    await store.create_job(Job(namespace=NS, id="noop", executor="noop", parameters={}))
    for n in range(count):
        await store.create_schedule(
            Schedule(namespace=NS, id=f"s{n}", job_id="noop", trigger=IntervalSpec(timedelta(hours=1)))
        )
    async with store.engine.connect() as conn:  # due now
        await conn.execute(sa.text("UPDATE schedules SET next_fire_time = now() - interval '1 second'"))
    finished = 0
    with counting(store) as sent:
        assert await Dispatcher(store).run_once() == count
        while claimed := await store.claim_executions(WORKER, slots, LEASE):
            outcomes = [(c, RunOutcome(ExecutionState.SUCCEEDED, exit_code=0)) for c in claimed]
            ended = await store.finish_executions(outcomes, WORKER, plan_retry)
            finished += sum(e is not None for e in ended)
        while await store.sequence_events(1000):
            pass
    assert finished == count
    # 195 now (events of a dispatch batch in its insert, the claim in one statement): 217 before,
    # 5,918 before the set-based steps. At most one statement per execution is the target.
    assert sent.count <= 200, f"{sent.count} statements for {count} executions"


async def test_a_claim_does_not_wait_for_another_numbering_and_leaves_its_events_to_the_sequencer(
    store: SqlStore,
) -> None:
    """While another numbering holds the sequencer's lock, the statements of every run write their
    events unnumbered rather than wait (every replica's would take turns until each commits);
    the sequencer numbers them once the lock is free, in order."""
    await store.create_job(Job(namespace=NS, id="noop", executor="noop", parameters={}))
    for _ in range(3):
        await store.run_job(NS, "noop", {})
    engine = create_async_engine(store.engine.url, poolclass=NullPool)
    try:
        async with engine.connect() as other:
            await other.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SEQUENCER_LOCK})
            claimed = await asyncio.wait_for(store.claim_executions(WORKER, 3, LEASE), 30)
            assert len(claimed) == 3
            assert await store.read_events(EventFilter(namespace=NS), after=0, limit=100) == []
            await other.rollback()
    finally:
        await engine.dispose()
    assert await store.sequence_events(100) == 1 + 2 * 3
    events = await store.read_events(EventFilter(namespace=NS), after=0, limit=100)
    assert [e.type for e in events] == [EventType.JOB_CREATED] + [EventType.EXECUTION_QUEUED] * 3 + [
        EventType.EXECUTION_STARTED
    ] * 3


async def test_numbering_a_batch_of_events_is_one_statement_under_the_lock(store: SqlStore) -> None:
    await store.create_job(Job(namespace=NS, id="noop", executor="noop", parameters={}))
    for _ in range(BATCH):
        await store.run_job(NS, "noop", {})
    with counting(store) as sent:
        numbered = await store.sequence_events(10_000)
    # One call takes the sequencer's lock and numbers them, its NOTIFY included (4 statements
    # before: BEGIN, the lock, the numbering, COMMIT).
    assert sent.count == 1, sent.statements
    assert numbered == 1 + BATCH  # the job's event, then each run's QUEUED
    events = await store.read_events(EventFilter(namespace=NS), after=0, limit=10_000)
    assert [e.sequence for e in events] == list(range(1, numbered + 1))
    assert events[-1].type is EventType.EXECUTION_QUEUED
    await store.run_job(NS, "noop", {})
    assert await store.sequence_events(10_000) == 1
    assert await store.latest_event_sequence() == numbered + 1


def test_numbering_reads_its_batch_with_the_plan_it_made_while_the_table_was_empty(store: SqlStore) -> None:
    """The numbering keeps one plan per session (migration 0030). Made here when the statistics
    said the events table was empty (where reading it in full looks cheapest), it still reads only
    the batch and the last sequence once 2,000 events are stored."""
    add = (
        "INSERT INTO events (sequence, type, namespace, resource, job_id, schedule_id, actor, time)"
        " SELECT {sequence}, 'job_created', 'ns', 'r', '', '', '', now()"
        " FROM generate_series(1, {count}) AS n"
    )
    plain = sa.create_engine(
        sync_url(store.engine.url.render_as_string(hide_password=False)), poolclass=NullPool
    )
    try:
        with plain.connect() as conn:
            conn.execute(sa.text("ALTER TABLE events SET (autovacuum_enabled = off)"))
            conn.execute(sa.text("ANALYZE events"))
            conn.commit()
            for _ in range(6):  # past the custom plans PostgreSQL tries first
                conn.execute(sa.text("SELECT cronwire_number_events(16)"))
                conn.commit()
            conn.execute(sa.text(add.format(sequence="n", count=2000)))
            conn.execute(sa.text(add.format(sequence="NULL", count=16)))
            conn.commit()
            numbered = conn.execute(sa.text("SELECT cronwire_number_events(16)")).scalar_one()
            read = rows_read(conn, "events")
            conn.commit()
    finally:
        plain.dispose()
    assert numbered == 16
    assert read <= 16 * 4, f"{read} events read to number 16"


async def test_a_claim_and_a_finish_number_their_own_events_after_those_committed_before(
    store: SqlStore,
) -> None:
    """The statements of every run write their events numbered (no second write of each by the
    sequencer), after any committed before them that the sequencer had not numbered yet."""
    await store.create_job(Job(namespace=NS, id="noop", executor="noop", parameters={}))
    for _ in range(BATCH):
        await store.run_job(NS, "noop", {})
    claimed = await store.claim_executions(WORKER, BATCH, LEASE)
    assert len(claimed) == BATCH
    # The claim numbered the job's event and the QUEUED ones first, then its STARTED ones.
    events = await store.read_events(EventFilter(namespace=NS), after=0, limit=10_000)
    assert [e.sequence for e in events] == list(range(1, 2 + 2 * BATCH))
    assert [e.type for e in events[1 : 1 + BATCH]] == [EventType.EXECUTION_QUEUED] * BATCH
    assert [e.type for e in events[1 + BATCH :]] == [EventType.EXECUTION_STARTED] * BATCH
    items = [(c, RunOutcome(ExecutionState.SUCCEEDED, exit_code=0)) for c in claimed]
    await store.finish_executions(items, WORKER, plan_retry)
    events = await store.read_events(EventFilter(namespace=NS), after=1 + 2 * BATCH, limit=10_000)
    assert [e.sequence for e in events] == list(range(2 + 2 * BATCH, 2 + 3 * BATCH))
    assert {e.type for e in events} == {EventType.EXECUTION_SUCCEEDED}
    # Nothing was left for the sequencer to number (a second write of each).
    assert await store.sequence_events(10_000) == 0


async def test_the_statements_of_every_run_add_their_runs_to_the_counters_themselves(
    store: SqlStore,
) -> None:
    """A dispatch's ticks, a plain claim and a plain finish add their runs to the counters at once,
    recording nothing for the fold at commit (migration 0029), and the counters stay exact."""
    await store.create_job(Job(namespace=NS, id="noop", executor="noop", parameters={}))
    for n in range(3):
        await store.create_schedule(
            Schedule(namespace=NS, id=f"s{n}", job_id="noop", trigger=IntervalSpec(timedelta(hours=1)))
        )
    await store.run_job(NS, "noop", {})  # recorded for the fold, before the guard
    async with store.engine.connect() as conn:
        # Two ticks of each schedule due, whenever this runs: a second before the anchor its
        # interval counts from (its creation, to the second), which runs, and the anchor itself,
        # skipped as overlapping that run. A second before now() falls on either side of it.
        await conn.execute(
            sa.text(
                "UPDATE schedules"
                " SET next_fire_time = date_trunc('second', create_time) - interval '1 second'"
            )
        )
        await conn.execute(
            sa.text(
                "CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$"
                " BEGIN RAISE EXCEPTION 'a change recorded for the fold'; END $$"
            )
        )
        await conn.execute(
            sa.text(
                "CREATE TRIGGER refuse_change BEFORE INSERT ON execution_counter_changes"
                " FOR EACH ROW EXECUTE FUNCTION refuse_change()"
            )
        )
        await conn.commit()
    assert await Dispatcher(store).run_once() == 3
    claimed = await store.claim_executions(WORKER, 10, LEASE)
    assert len(claimed) == 4
    outcomes = [(c, RunOutcome(ExecutionState.SUCCEEDED, exit_code=0)) for c in claimed[:3]]
    outcomes.append((claimed[3], RunOutcome(ExecutionState.FAILED, exit_code=1)))
    ended = await store.finish_executions(outcomes, WORKER, plan_retry)
    assert all(e is not None for e in ended)

    # Every execution counted once (the dispatch also recorded the tick each schedule missed as
    # SKIPPED), each in its state.
    tally = sa.text(
        "SELECT count(*), count(*) FILTER (WHERE state = 'succeeded'),"
        " count(*) FILTER (WHERE state = 'failed')"
        " FROM executions WHERE schedule_id = :schedule OR :schedule = ''"
    )
    async with store.engine.connect() as conn:
        for kind, owner, schedule in [
            ("job", "noop", ""),
            *[("schedule", f"s{n}", f"s{n}") for n in range(3)],
        ]:
            read = (
                store.get_job(NS, owner, with_stats=True)
                if kind == "job"
                else store.get_schedule(NS, owner, with_stats=True)
            )
            stats = (await read).stats
            assert stats is not None
            expected = (await conn.execute(tally, {"schedule": schedule})).one()
            assert (stats.total, stats.succeeded, stats.failed) == tuple(expected), (kind, owner)
    assert expected[0] == 2  # a schedule's: its run and the tick it missed
    stats = (await store.get_job(NS, "noop", with_stats=True)).stats
    assert stats is not None
    assert (stats.total, stats.succeeded, stats.failed) == (7, 3, 1)
    last = max((e for e in ended if e), key=lambda e: (e.start_time, e.id))
    assert (stats.last_run_time, stats.last_run_state) == (last.start_time, last.state)
    assert stats.p50_duration is not None
