"""The remote dispatch hands work out when it is woken, not at its poll: work queued while every
stream is full goes out as soon as room comes free; work queued while a stream has room goes out
at once. (The poll is made an hour long here, so only the wake-ups can do it.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from cronwire_server import remote_workers
from cronwire_server.core.model import ExecutionState, Job
from cronwire_server.executors.runtime import REFUSALS_BEFORE_STRIPPING
from cronwire_server.remote_workers import Assignment, RemoteWorkers, Session
from cronwire_server.storage.sql_store import SqlStore
from cronwire_server.supervisor import Supervisor
from tests.support import RefusingFinishes

NS = "dispatch"


@pytest.fixture
async def workers(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RemoteWorkers]:
    monkeypatch.setattr(remote_workers, "POLL_SECONDS", 3600.0)
    stopping = asyncio.Event()
    supervisor = Supervisor(stopping)
    started = RemoteWorkers(store, lease=timedelta(seconds=60), capture_bytes=1 << 16)
    started.start(supervisor, stopping)
    try:
        yield started
    finally:
        stopping.set()
        await supervisor.stop(within=0)


async def assigned(session: Session, within: float = 15.0) -> Assignment:
    deadline = time.monotonic() + within
    while True:
        if not session.outbox.empty():
            message = session.outbox.get_nowait()
            assert isinstance(message, Assignment), message
            return message
        assert time.monotonic() < deadline, "no assignment came"
        await asyncio.sleep(0.01)


async def test_work_queued_while_full_goes_out_when_room_comes_free(
    store: SqlStore, workers: RemoteWorkers
) -> None:
    await store.create_job(Job(namespace=NS, id="job", executor="remote", parameters={"queue": "q"}))
    session = workers.open(identity="w", queues=["q"], tasks=[], namespaces=None, free=2)
    first = await store.run_job(NS, "job", {})
    running = await assigned(session)
    assert running.execution.id == first.id
    # The queue is empty now; the worker says it is full (busy with work of its own).
    workers.set_free(session, 0)
    second = await store.run_job(NS, "job", {})
    await asyncio.sleep(0.2)  # give a wrong hand-out the chance to show (not a wait for one)
    assert session.outbox.empty()
    assert (await store.get_execution(NS, second.id)).state is ExecutionState.QUEUED
    # The run ends and the worker has room again: the run that waited goes out.
    name, token = f"namespaces/{NS}/executions/{first.id}", running.claim.token
    await workers.result(session, name, token, success={"ok": True})
    workers.set_free(session, 2)
    assert (await assigned(session)).execution.id == second.id
    deadline = time.monotonic() + 15
    while (await store.get_execution(NS, first.id)).state is not ExecutionState.SUCCEEDED:
        assert time.monotonic() < deadline, "the first run's result was not recorded"
        await asyncio.sleep(0.02)


async def test_work_queued_while_a_stream_has_room_goes_out_at_once(
    store: SqlStore, workers: RemoteWorkers
) -> None:
    await store.create_job(Job(namespace=NS, id="job", executor="remote", parameters={"queue": "q"}))
    session = workers.open(identity="w", queues=["q"], tasks=[], namespaces=None, free=4)
    await asyncio.sleep(0.2)  # the dispatch has looked and found nothing (not a wait for one)
    for _ in range(3):
        run = await store.run_job(NS, "job", {})
        assert (await assigned(session)).execution.id == run.id


async def test_a_failing_live_output_write_ends_neither_the_stream_nor_the_run(
    store: SqlStore, workers: RemoteWorkers, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.create_job(Job(namespace=NS, id="job", executor="remote", parameters={"queue": "q"}))
    session = workers.open(identity="w", queues=["q"], tasks=[], namespaces=None, free=1)
    execution = await store.run_job(NS, "job", {})
    running = await assigned(session)

    async def refusing_append(*args: object, **kwargs: object) -> None:
        raise ValueError("refused")

    monkeypatch.setattr(store, "append_logs", refusing_append)
    name, token = f"namespaces/{NS}/executions/{execution.id}", running.claim.token
    await workers.output(session, name, token, "said\n")  # raised before, ending the stream
    await workers.result(session, name, token, success={"ok": True})
    deadline = time.monotonic() + 15
    while (await store.get_execution(NS, execution.id)).state is not ExecutionState.SUCCEEDED:
        assert time.monotonic() < deadline, "the run's result was not recorded"
        await asyncio.sleep(0.02)
    assert (await store.get_execution(NS, execution.id)).output == "said\n"


async def test_a_result_the_database_refuses_does_not_hold_up_the_others(
    store: SqlStore, workers: RemoteWorkers, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.create_job(Job(namespace=NS, id="job", executor="remote", parameters={"queue": "q"}))
    session = workers.open(identity="w", queues=["q"], tasks=[], namespaces=None, free=2)
    refused, other = await store.run_job(NS, "job", {}), await store.run_job(NS, "job", {})
    tokens = {a.execution.id: a.claim.token for a in [await assigned(session), await assigned(session)]}
    finishes = RefusingFinishes(store, refused.id)
    monkeypatch.setattr(store, "finish_executions", finishes)
    for execution in (refused, other):
        name = f"namespaces/{NS}/executions/{execution.id}"
        await workers.result(session, name, tokens[execution.id], success={"ok": True})
    finishes.open.set()

    async def state_of(execution_id: str) -> ExecutionState:
        return (await store.get_execution(NS, execution_id)).state

    deadline = time.monotonic() + 15
    while await state_of(other.id) is not ExecutionState.SUCCEEDED:
        assert time.monotonic() < deadline, "the other result was not recorded"
        await asyncio.sleep(0.02)
    assert finishes.sizes[0] == 2  # one statement for both first, then one each
    assert await state_of(refused.id) is ExecutionState.RUNNING
    finishes.refusing = False  # kept, not dropped: once the database takes it, it is written too
    while await state_of(refused.id) is not ExecutionState.SUCCEEDED:
        assert time.monotonic() < deadline, "the refused result was not recorded once taken"
        await asyncio.sleep(0.02)


async def test_a_result_refused_even_alone_ends_the_run_without_what_the_task_returned(
    store: SqlStore, workers: RemoteWorkers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote_workers, "RETRY_AFTER_ERROR", 0.05)
    await store.create_job(Job(namespace=NS, id="job", executor="remote", parameters={"queue": "q"}))
    session = workers.open(identity="w", queues=["q"], tasks=[], namespaces=None, free=1)
    refused = await store.run_job(NS, "job", {})
    token = (await assigned(session)).claim.token
    # The database refuses the run's outcome while it holds the task's result, however written.
    finishes = RefusingFinishes(store, refused.id, refuses=lambda outcome: outcome.result is not None)
    finishes.open.set()
    monkeypatch.setattr(store, "finish_executions", finishes)
    await workers.result(session, f"namespaces/{NS}/executions/{refused.id}", token, success={"ok": True})

    deadline = time.monotonic() + 15
    while (got := await store.get_execution(NS, refused.id)).end_time is None:
        assert time.monotonic() < deadline, "the refused result was not recorded"
        await asyncio.sleep(0.02)
    # Written without what the task returned, saying so, within its lease: not LOST and run again.
    assert (got.state, got.result) == (ExecutionState.SUCCEEDED, None)
    assert "could not be stored (ValueError) and were dropped" in got.error
    # Once in the first statement, then alone until it is written.
    assert finishes.sizes == [1] * (REFUSALS_BEFORE_STRIPPING + 2)
