"""Taking remote work for several streams at once (`Store.take_remote`): each stream gets only
work of its queues, tasks and namespaces, never more than its room, no execution twice, each
under its own lease; admission holds across them; on PostgreSQL it is one statement."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from cronwire_server.core.model import EventType, ExecutionState, Job
from cronwire_server.executors.runtime import RunOutcome
from cronwire_server.storage.remote import (
    HeldRemoteLease,
    RemoteTake,
    new_session_secret,
    secret_of,
    session_worker,
)
from cronwire_server.storage.sql_store import SqlStore
from cronwire_server.workers import plan_retry
from tests.support import statements_sent as counting

NS = "remote"
LEASE = timedelta(seconds=60)


def remote_job(job_id: str, queue: str, task: str = "", **fields: Any) -> Job:
    parameters = {"queue": queue, **({"task": task} if task else {})}
    return Job(namespace=NS, id=job_id, executor="remote", parameters=parameters, **fields)


def stream(
    identity: str,
    queues: tuple[str, ...],
    limit: int,
    *,
    tasks: tuple[str, ...] = (),
    namespaces: tuple[str, ...] | None = None,
) -> RemoteTake:
    secret = new_session_secret()
    return RemoteTake(
        worker=session_worker(identity, secret),
        secret=secret,
        queues=queues,
        tasks=tasks,
        namespaces=namespaces,
        limit=limit,
        lease=LEASE,
    )


async def queue_runs(store: SqlStore, job: Job, count: int) -> list[str]:
    return [(await store.run_job(job.namespace, job.id, {})).id for _ in range(count)]


async def test_one_take_serves_every_stream_by_its_queues_tasks_and_room(store: SqlStore) -> None:
    plain_a = remote_job("plain-a", "a")
    task_x = remote_job("task-x", "a", task="x")
    task_y = remote_job("task-y", "a", task="y")
    plain_b = remote_job("plain-b", "b")
    for job in (plain_a, task_x, task_y, plain_b):
        await store.create_job(job)
    queued = {
        job.id: set(await queue_runs(store, job, count))
        for job, count in ((plain_a, 4), (task_x, 3), (task_y, 2), (plain_b, 3))
    }
    takes = [
        stream("only-x", ("a",), 10, tasks=("x",)),  # task x, or jobs naming no task
        stream("a-small", ("a",), 2),
        stream("b-big", ("b",), 10),
        stream("elsewhere", ("a", "b"), 10, namespaces=("other",)),
        stream("full", ("a", "b"), 0),
    ]
    taken = await store.take_remote(takes)

    assert len(taken.claims) == len(takes)
    ids = [c.claimed.execution.id for claims in taken.claims for c in claims]
    assert len(ids) == len(set(ids)), "an execution given twice"
    only_x, a_small, b_big, elsewhere, full = taken.claims
    assert elsewhere == []
    assert full == []
    assert len(a_small) == 2
    assert {c.claimed.execution.id for c in b_big} == queued["plain-b"]
    assert {c.claimed.job.id for c in only_x} <= {"plain-a", "task-x"}
    # Everything of queue a went to one of its two streams, as far as their room and tasks allow.
    assert len(only_x) == 7 - sum(1 for c in a_small if c.claimed.job.id != "task-y")
    for take, claims in zip(takes, taken.claims, strict=True):
        for claim in claims:
            execution = claim.claimed.execution
            assert execution.state is ExecutionState.RUNNING
            assert execution.worker == claim.worker == take.worker
            assert execution.start_time is not None
            assert secret_of(claim.token) == take.secret
            stored = await store.get_execution(NS, execution.id)
            assert stored.state is ExecutionState.RUNNING
            assert stored.worker == take.worker
    assert len({c.token for claims in taken.claims for c in claims}) == len(ids)
    # Each start has its event (numbered later by the sequencer).
    async with store.engine.connect() as conn:
        started_events = (
            await conn.execute(
                sa.text("SELECT count(*) FROM events WHERE type = :type AND namespace = :namespace"),
                {"type": EventType.EXECUTION_STARTED.value, "namespace": NS},
            )
        ).scalar_one()
    assert started_events == len(ids)


async def test_a_take_says_whether_more_may_wait(store: SqlStore) -> None:
    job = remote_job("many", "q")
    await store.create_job(job)
    await queue_runs(store, job, 5)
    first = await store.take_remote([stream("w1", ("q",), 2), stream("w2", ("q",), 1)])
    assert [len(c) for c in first.claims] == [2, 1]
    assert first.more  # the streams got all the room they asked for
    second = await store.take_remote([stream("w3", ("q",), 10)])
    assert [len(c) for c in second.claims] == [2]
    assert not second.more  # the queue is empty now
    third = await store.take_remote([stream("w3", ("q",), 10)])
    assert third.claims == [[]]
    assert not third.more


async def test_admission_holds_across_the_streams_of_a_take(store: SqlStore) -> None:
    limited = remote_job("limited", "q", max_concurrency=2)
    await store.create_job(limited)
    await queue_runs(store, limited, 5)
    takes = [stream("w1", ("q",), 3), stream("w2", ("q",), 3)]
    taken = await store.take_remote(takes)
    claims = [c for claims in taken.claims for c in claims]
    assert len(claims) == 2, "max_concurrency 2"
    again = await store.take_remote(takes)
    assert again.claims == [[], []]
    # One ends: one more may start.
    ended = claims[0]
    outcome = RunOutcome(ExecutionState.SUCCEEDED)
    (done,) = await store.finish_executions([(ended.claimed, outcome)], ended.worker, plan_retry)
    assert done is not None
    assert done.state is ExecutionState.SUCCEEDED
    third = await store.take_remote(takes)
    assert sum(len(c) for c in third.claims) == 1


async def test_serial_runs_of_a_schedule_go_one_at_a_time(store: SqlStore) -> None:
    job = remote_job("serial", "q")
    await store.create_job(job)
    await queue_runs(store, job, 1)
    # Serial executions (a schedule's with overlap QUEUE_ONE / a backfill's) need a turn: make
    # three of one schedule serial, queued.
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE executions SET serial = true, schedule_id = 's' WHERE namespace = :namespace"),
            {"namespace": NS},
        )
    await queue_runs(store, job, 2)
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE executions SET serial = true, schedule_id = 's' WHERE namespace = :namespace"),
            {"namespace": NS},
        )
    takes = [stream("w1", ("q",), 4), stream("w2", ("q",), 4)]
    taken = await store.take_remote(takes)
    assert sum(len(c) for c in taken.claims) == 1, "one serial turn at a time"
    assert (await store.take_remote(takes)).claims == [[], []]


async def test_on_postgres_one_statement_takes_for_every_stream(store: SqlStore, backend: str) -> None:
    if backend != "postgres":
        return
    for queue in ("a", "b"):
        job = remote_job(f"job-{queue}", queue)
        await store.create_job(job)
        await queue_runs(store, job, 6)
    takes = [
        stream("w1", ("a",), 3),
        stream("w2", ("a",), 3),
        stream("w3", ("b",), 3),
        stream("w4", ("a", "b"), 3),
    ]
    with counting(store) as sent:
        taken = await store.take_remote(takes)
    assert sum(len(c) for c in taken.claims) == 12
    assert len(sent) == 1, sent


async def test_heartbeats_of_several_streams_renew_together(store: SqlStore) -> None:
    job = remote_job("renewed", "q")
    await store.create_job(job)
    await queue_runs(store, job, 3)
    first, second = stream("w1", ("q",), 2), stream("w2", ("q",), 1)
    taken = await store.take_remote([first, second])
    mine, theirs = taken.claims
    cancelled = mine[0].claimed.execution
    await store.cancel_execution(NS, cancelled.id, "stop it")
    held = [HeldRemoteLease(NS, c.claimed.execution.id, c.worker) for c in mine]
    # A stream that says it holds the other stream's run holds nothing.
    forged = [HeldRemoteLease(NS, theirs[0].claimed.execution.id, first.worker)]
    real = [HeldRemoteLease(NS, theirs[0].claimed.execution.id, second.worker)]
    with counting(store) as sent:
        renewals = await store.renew_remote([held, forged, real], LEASE * 2)
    assert renewals[0].cancelled == {cancelled.id}
    assert renewals[0].lost == frozenset()
    assert renewals[1].lost == {theirs[0].claimed.execution.id}
    assert renewals[2].lost == frozenset()
    if store.engine.dialect.name == "postgresql":
        assert len(sent) == 1, sent
    stored = await store.get_execution(NS, theirs[0].claimed.execution.id)
    assert stored.worker == second.worker  # the forged heartbeat changed nothing
