"""The per-namespace running limit (--max-running-per-namespace) holds for remote runs too: a
take starts a namespace's remote runs only while its RUNNING executions, local and remote
together, stay within the limit; a namespace at its limit holds up no other namespace's work;
and on PostgreSQL a local claim and a remote take racing on two replicas never overshoot it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa

from cronwire_server.core.model import ExecutionState, Job
from cronwire_server.executors.runtime import RunOutcome
from cronwire_server.storage.base import ClaimedExecution
from cronwire_server.storage.remote import RemoteClaim, RemoteTake, new_session_secret, session_worker
from cronwire_server.storage.sql_store import SqlStore, open_store
from cronwire_server.workers import plan_retry

LIMIT = 2
LEASE = timedelta(seconds=60)
BUSY, OTHER = "busy", "other"


def stream(identity: str, limit: int) -> RemoteTake:
    secret = new_session_secret()
    return RemoteTake(
        worker=session_worker(identity, secret),
        secret=secret,
        queues=("q",),
        tasks=(),
        namespaces=None,
        limit=limit,
        lease=LEASE,
    )


async def remote_job(store: SqlStore, namespace: str, job_id: str = "remote") -> Job:
    job = Job(namespace=namespace, id=job_id, executor="remote", parameters={"queue": "q"})
    await store.create_job(job)
    return job


async def local_job(store: SqlStore, namespace: str, job_id: str = "local") -> Job:
    job = Job(namespace=namespace, id=job_id, executor="noop", parameters={})
    await store.create_job(job)
    return job


async def queue_runs(store: SqlStore, job: Job, count: int) -> list[str]:
    return [(await store.run_job(job.namespace, job.id, {})).id for _ in range(count)]


async def end(store: SqlStore, claimed: ClaimedExecution) -> None:
    (done,) = await store.finish_executions(
        [(claimed, RunOutcome(ExecutionState.SUCCEEDED))], claimed.execution.worker, plan_retry
    )
    assert done is not None


async def running_in(store: SqlStore, namespace: str) -> int:
    async with store.engine.connect() as conn:
        count = await conn.execute(
            sa.text("SELECT count(*) FROM executions WHERE namespace = :namespace AND state = :state"),
            {"namespace": namespace, "state": ExecutionState.RUNNING.value},
        )
        return int(count.scalar_one())


def namespaces_of(claims: list[list[RemoteClaim]]) -> list[str]:
    return sorted(c.claimed.execution.namespace for cs in claims for c in cs)


async def test_a_take_starts_no_more_of_a_namespace_than_its_limit(store: SqlStore) -> None:
    busy = await remote_job(store, BUSY)
    await queue_runs(store, busy, 3)
    await queue_runs(store, await remote_job(store, OTHER), 1)
    takes = [stream("w1", 10)]

    taken = await store.take_remote(takes, namespace_limit=LIMIT)
    assert namespaces_of(taken.claims) == [BUSY, BUSY, OTHER]
    assert (await store.take_remote(takes, namespace_limit=LIMIT)).claims == [[]]
    # One ends: the next of its namespace may start.
    first = next(c for c in taken.claims[0] if c.claimed.execution.namespace == BUSY)
    await end(store, first.claimed)
    again = await store.take_remote(takes, namespace_limit=LIMIT)
    assert namespaces_of(again.claims) == [BUSY]
    assert await running_in(store, BUSY) == LIMIT
    # Without a limit, nothing holds the take back (the default).
    await queue_runs(store, busy, 2)
    assert namespaces_of((await store.take_remote(takes)).claims) == [BUSY, BUSY]


async def test_the_limit_is_kept_across_the_streams_of_a_take(store: SqlStore) -> None:
    await queue_runs(store, await remote_job(store, BUSY), 5)
    taken = await store.take_remote(
        [stream("w1", 1), stream("w2", 3), stream("w3", 3)], namespace_limit=LIMIT
    )
    assert sum(len(c) for c in taken.claims) == LIMIT
    assert await running_in(store, BUSY) == LIMIT


async def test_local_runs_count_toward_the_limit_of_remote_takes_and_back(store: SqlStore) -> None:
    await queue_runs(store, await local_job(store, BUSY), 1)
    (local,) = await store.claim_executions("local-pool", 5, LEASE, namespace_limit=LIMIT)
    await queue_runs(store, await remote_job(store, BUSY), 3)
    takes = [stream("w1", 10)]

    taken = await store.take_remote(takes, namespace_limit=LIMIT)
    assert namespaces_of(taken.claims) == [BUSY], "one local run and one remote run: the limit"
    assert (await store.take_remote(takes, namespace_limit=LIMIT)).claims == [[]]
    # The local run ends: the next remote run starts.
    await end(store, local)
    assert namespaces_of((await store.take_remote(takes, namespace_limit=LIMIT)).claims) == [BUSY]
    # And the remote runs count for the local claim: two run, a local run queued waits.
    await queue_runs(store, await local_job(store, BUSY, "local-2"), 1)
    assert await store.claim_executions("local-pool", 5, LEASE, namespace_limit=LIMIT) == []
    assert await running_in(store, BUSY) == LIMIT


async def test_a_namespace_at_its_limit_holds_up_no_other_namespace(store: SqlStore) -> None:
    busy = await remote_job(store, BUSY)
    await queue_runs(store, busy, LIMIT)
    takes = [stream("w1", 3)]
    assert len((await store.take_remote(takes, namespace_limit=LIMIT)).claims[0]) == LIMIT
    # A backlog older than the other namespace's run, longer than any take's candidates.
    await queue_runs(store, busy, 30)
    (other,) = await queue_runs(store, await remote_job(store, OTHER), 1)
    taken = await store.take_remote(takes, namespace_limit=LIMIT)
    assert [c.claimed.execution.id for c in taken.claims[0]] == [other]


async def test_on_postgres_the_unlimited_take_stays_one_statement(store: SqlStore, backend: str) -> None:
    if backend != "postgres":
        return
    await queue_runs(store, await remote_job(store, BUSY), 3)
    sent: list[str] = []

    def hook(*args: object) -> None:
        sent.append(str(args[2]))

    engine = store.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", hook)
    try:
        taken = await store.take_remote([stream("w1", 10)])
    finally:
        sa.event.remove(engine, "before_cursor_execute", hook)
    assert sum(len(c) for c in taken.claims) == 3
    assert len(sent) == 1, sent
    assert "pg_advisory" not in sent[0]


@pytest.mark.postgres
async def test_a_local_claim_and_a_remote_take_racing_on_two_replicas_never_overshoot(
    fresh_database_url: Callable[[str], str],
) -> None:
    url = fresh_database_url("postgres")
    local_replica, remote_replica = await open_store(url), await open_store(url)
    try:
        local, remote = await local_job(local_replica, BUSY), await remote_job(local_replica, BUSY)
        for _ in range(15):
            await queue_runs(local_replica, local, 4)
            await queue_runs(local_replica, remote, 4)
            # One place taken by a run already going: the claim and the take race for the rest.
            (going,) = await local_replica.claim_executions("pool-0", 1, LEASE, namespace_limit=LIMIT + 1)
            claimed, taken = await asyncio.gather(
                local_replica.claim_executions("pool-1", 4, LEASE, namespace_limit=LIMIT + 1),
                remote_replica.take_remote([stream("w1", 4)], namespace_limit=LIMIT + 1),
            )
            started = len(claimed) + sum(len(c) for c in taken.claims)
            assert started == LIMIT, (len(claimed), [len(c) for c in taken.claims])
            assert await running_in(local_replica, BUSY) == LIMIT + 1
            # Everything ends, and what is still queued is cleared for the next round.
            for run in [going, *claimed, *(c.claimed for cs in taken.claims for c in cs)]:
                await end(local_replica, run)
            async with local_replica.engine.begin() as conn:
                await conn.execute(
                    sa.text("DELETE FROM executions WHERE state = :state"),
                    {"state": ExecutionState.QUEUED.value},
                )
    finally:
        await local_replica.close()
        await remote_replica.close()
