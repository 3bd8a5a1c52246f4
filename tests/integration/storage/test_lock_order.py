"""Lease renewal, finishing and releasing lock a worker's executions in one order (primary key),
so that a replica's heartbeat and finisher, or two replicas, never deadlock on them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from typing import TypeVar

import psycopg
import pytest
from sqlalchemy.engine import make_url

from cronwire_server.core.model import ExecutionState, Job
from cronwire_server.executors.runtime import RunOutcome
from cronwire_server.storage.base import ClaimedExecution
from cronwire_server.storage.sql_store import SqlStore, open_store
from cronwire_server.workers import plan_retry
from tests.support import wait_for

NS = "locks"
WORKER = "host:1:abc"
LEASE = timedelta(seconds=60)
BOUND = 10.0
T = TypeVar("T")

pytestmark = pytest.mark.postgres


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def url(fresh_database_url: Callable[[str], str]) -> str:
    return fresh_database_url("postgres")


@pytest.fixture
async def store(url: str) -> AsyncIterator[SqlStore]:
    opened = await open_store(url)
    yield opened
    await opened.close()


@pytest.fixture
def blocker(url: str) -> Iterator[psycopg.Connection]:
    """A session that holds row locks in a transaction of its own."""
    with psycopg.connect(_libpq(url)) as conn:
        yield conn
        conn.rollback()


async def three_running(store: SqlStore, url: str) -> list[ClaimedExecution]:
    """Three executions `WORKER` runs, in primary-key order; the first is stored last on disk and
    expires last, so that neither a table scan nor the lease index would reach it first."""
    await store.create_job(Job(namespace=NS, id="job", executor="noop", parameters={}))
    for _ in range(3):
        await store.run_job(NS, "job", {})
    claimed = await store.claim_executions(WORKER, 3, LEASE)
    assert len(claimed) == 3
    claimed.sort(key=lambda c: c.execution.id)
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute(
            "UPDATE executions SET lease_expires_at = lease_expires_at + interval '1 minute' WHERE id = %s",
            (claimed[0].execution.id,),
        )
    return claimed


def locked_by_others(url: str, ids: list[str]) -> set[str]:
    """Which of the rows another session holds locked (probed without waiting)."""
    locked = set()
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        for execution_id in ids:
            try:
                with conn.transaction():
                    conn.execute("SELECT 1 FROM executions WHERE id = %s FOR UPDATE NOWAIT", (execution_id,))
            except psycopg.errors.LockNotAvailable:
                locked.add(execution_id)
    return locked


def waiting_for_a_lock(url: str) -> bool:
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        ).fetchone()
    return row is not None and row[0] > 0


async def locks_taken_before_the_middle_row(
    url: str, blocker: psycopg.Connection, claimed: list[ClaimedExecution], work: Awaitable[T]
) -> tuple[set[str], T]:
    """Run `work` while `blocker` holds the middle row: which rows `work` held meanwhile, and
    what it returned once the row was free."""
    first, middle, last = (c.execution.id for c in claimed)
    blocker.execute("SELECT 1 FROM executions WHERE id = %s FOR UPDATE", (middle,))
    task = asyncio.ensure_future(work)
    try:
        await asyncio.to_thread(wait_for, lambda: waiting_for_a_lock(url), BOUND, "a wait for a lock")
        held = locked_by_others(url, [first, last])
    finally:
        blocker.rollback()
        async with asyncio.timeout(BOUND):
            result = await task
    return held, result


async def test_renewal_locks_in_primary_key_order(
    store: SqlStore, url: str, blocker: psycopg.Connection
) -> None:
    claimed = await three_running(store, url)
    ids = [c.execution.id for c in reversed(claimed)]
    held, renewal = await locks_taken_before_the_middle_row(
        url, blocker, claimed, store.renew_leases(WORKER, ids, LEASE)
    )
    assert held == {claimed[0].execution.id}
    assert (renewal.cancelled, renewal.lost) == (frozenset(), frozenset())


async def test_finishing_locks_in_primary_key_order_whatever_the_order_runs_ended(
    store: SqlStore, url: str, blocker: psycopg.Connection
) -> None:
    claimed = await three_running(store, url)
    outcome = RunOutcome(ExecutionState.SUCCEEDED, exit_code=0)
    items = [(c, outcome) for c in reversed(claimed)]
    finishing = store.finish_executions(items, WORKER, plan_retry)
    held, ended = await locks_taken_before_the_middle_row(url, blocker, claimed, finishing)
    assert held == {claimed[0].execution.id}
    # The results follow the items, not the order the rows were taken in.
    assert [e.id if e else None for e in ended] == [c.execution.id for c in reversed(claimed)]
    assert {e.state if e else None for e in ended} == {ExecutionState.SUCCEEDED}


async def test_a_finish_ends_the_version_a_renewal_committed_while_it_waited_for_the_row(
    store: SqlStore, url: str, blocker: psycopg.Connection
) -> None:
    # A lease renewal (the replica's own, on another connection) that commits while a finish
    # waits for the row leaves a newer version of it: the finish ends that one, not none.
    claimed = await three_running(store, url)
    middle = claimed[1].execution.id
    blocker.execute(
        "UPDATE executions SET lease_expires_at = lease_expires_at + interval '1 minute' WHERE id = %s",
        (middle,),
    )
    outcome = RunOutcome(ExecutionState.SUCCEEDED, exit_code=0)
    task = asyncio.ensure_future(store.finish_executions([(c, outcome) for c in claimed], WORKER, plan_retry))
    try:
        await asyncio.to_thread(wait_for, lambda: waiting_for_a_lock(url), BOUND, "the finish to wait")
    finally:
        blocker.commit()
    async with asyncio.timeout(BOUND):
        ended = await task
    assert [e.state if e else None for e in ended] == [ExecutionState.SUCCEEDED] * 3
    assert (await store.get_execution(NS, middle)).state is ExecutionState.SUCCEEDED


async def test_releasing_locks_in_primary_key_order(
    store: SqlStore, url: str, blocker: psycopg.Connection
) -> None:
    claimed = await three_running(store, url)
    ids = [c.execution.id for c in reversed(claimed)]
    held, _ = await locks_taken_before_the_middle_row(
        url, blocker, claimed, store.release_executions(WORKER, ids)
    )
    assert held == {claimed[0].execution.id}
    assert await store.claim_executions("another:2:def", 3, LEASE), "not put back in the queue"


async def test_a_renewal_reports_the_runs_no_longer_held_and_those_cancelled(
    store: SqlStore, url: str
) -> None:
    claimed = await three_running(store, url)
    first, second, third = (c.execution.id for c in claimed)
    await store.cancel_execution(NS, second, "test")
    await store.finish_executions([(claimed[2], RunOutcome(ExecutionState.SUCCEEDED))], WORKER, plan_retry)
    renewal = await store.renew_leases(WORKER, [first, second, third], LEASE)
    assert renewal.cancelled == {second}
    assert renewal.lost == {third}
