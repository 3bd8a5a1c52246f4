"""A worker slot is for running a job's code: a run whose code has ended gives its slot back
while its outcome waits to be written, so the next claim does not wait for that write. Beside its
slots' runs the pool holds at most `OUTCOME_BACKLOG` outcomes waiting (as many as its slots once
they hold more output than its slots' runs may capture), so outcomes a slow database has not taken
stay bounded."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cronwire_server import workers
from cronwire_server.core.model import Execution, ExecutionState, Job, Page
from cronwire_server.executors.runtime import REFUSALS_BEFORE_STRIPPING
from cronwire_server.storage.base import ExecutionFilter
from cronwire_server.storage.sql_store import SqlStore
from tests.support import RefusingFinishes, eventually, running_pool

NS = "slots"


async def states(store: SqlStore) -> Counter[ExecutionState]:
    listed = await store.list_executions(NS, Page(size=100), ExecutionFilter())
    return Counter(e.state for e in listed.items)


async def until_succeeded(store: SqlStore, count: int, what: str) -> None:
    async def reached() -> bool:
        return (await states(store))[ExecutionState.SUCCEEDED] == count

    await eventually(reached, 15, what)


async def held_in_all(store: SqlStore, pool: workers.WorkerPool, count: int, what: str) -> None:
    """Wait until the pool holds `count` runs, RUNNING in the database, their outcomes waiting."""

    async def held() -> bool:
        ended = all(r.finishing for r in pool._running.values())
        return ended and pool.running == count and (await states(store))[ExecutionState.RUNNING] == count

    await eventually(held, 15, what)


async def test_a_run_gives_its_slot_back_before_its_outcome_is_written(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "OUTCOME_BACKLOG", 2)
    await store.create_job(Job(namespace=NS, id="noop", executor="noop", parameters={}))
    for _ in range(4):
        await store.run_job(NS, "noop", {})
    finishes = RefusingFinishes(store)
    monkeypatch.setattr(store, "finish_executions", finishes)
    async with running_pool(store, slots=1) as pool:
        # One slot, and no outcome written: runs went on starting as each one's code ended...
        await held_in_all(store, pool, 3, "three runs to end while no outcome is written")
        # ...until the slot and OUTCOME_BACKLOG were held: the fourth waits for a write.
        assert (await states(store))[ExecutionState.QUEUED] == 1

        finishes.open.set()

        await until_succeeded(store, 4, "every run to succeed once outcomes are written")


async def test_outcomes_holding_much_output_wait_only_as_many_as_the_slots(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each run's output (100 characters) is cut to what a run may capture (64).
    prints = {"argv": ["sh", "-c", "printf '%0100d' 0"]}
    await store.create_job(Job(namespace=NS, id="talks", executor="shell", parameters=prints))
    for _ in range(4):
        await store.run_job(NS, "talks", {})
    finishes = RefusingFinishes(store)
    monkeypatch.setattr(store, "finish_executions", finishes)
    async with running_pool(store, slots=1, capture_bytes=64) as pool:
        # The first outcome holds what one slot's run may capture, so a second run starts; with
        # two waiting they hold more, and the pool holds no more than twice its slots.
        await held_in_all(store, pool, 2, "two runs to end while no outcome is written")
        assert (await states(store))[ExecutionState.QUEUED] == 2

        finishes.open.set()

        await until_succeeded(store, 4, "every run to succeed once outcomes are written")
        listed = await store.list_executions(NS, Page(size=10), ExecutionFilter())
        outputs = {(await store.get_execution(NS, e.id)).output for e in listed.items}
        assert outputs == {"0" * 64}


async def test_an_outcome_the_database_refuses_does_not_hold_up_the_others(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.create_job(Job(namespace=NS, id="noop", executor="noop", parameters={}))
    refused = (await store.run_job(NS, "noop", {})).id
    for _ in range(5):
        await store.run_job(NS, "noop", {})
    # Nothing is written until every run has ended, so the first write is one batch of all six;
    # the database then refuses every write that holds the first run's outcome.
    finishes = RefusingFinishes(store, refused)
    monkeypatch.setattr(store, "finish_executions", finishes)
    async with running_pool(store, slots=6) as pool:
        await eventually(lambda: pool.running == 6, 15, "six runs to end and wait for their write")
        finishes.open.set()

        await until_succeeded(store, 5, "the five other outcomes to be written")
        assert finishes.sizes[0] == 6  # one batch first, then one outcome at a time
        assert (await states(store))[ExecutionState.RUNNING] == 1
        # Kept, not dropped: once the database takes it, it is written too.
        finishes.refusing = False

        await until_succeeded(store, 6, "the refused outcome to be written once it is taken")


async def test_an_outcome_refused_even_alone_ends_the_run_without_what_the_job_produced(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "RETRY_AFTER_ERROR", 0.05)
    returns = {"callable": "json:loads", "args": ['{"kept": false}']}
    await store.create_job(Job(namespace=NS, id="returns", executor="python", parameters=returns))
    await store.create_job(Job(namespace=NS, id="noop", executor="noop", parameters={}))
    returned = (await store.run_job(NS, "returns", {})).id
    for _ in range(3):
        await store.run_job(NS, "noop", {})
    # The database refuses the run's outcome while it holds the job's result, however written.
    finishes = RefusingFinishes(store, returned, refuses=lambda outcome: outcome.result is not None)
    finishes.open.set()
    monkeypatch.setattr(store, "finish_executions", finishes)
    async with running_pool(store, slots=4):

        async def ended() -> Execution | None:
            got = await store.get_execution(NS, returned)
            return got if got.end_time is not None else None

        got = await eventually(ended, 30, "the refused run to end")
        # Written without what the job produced, saying so; how it ended is kept.
        assert (got.state, got.exit_code, got.result) == (ExecutionState.SUCCEEDED, 0, None)
        assert "could not be stored (ValueError) and were dropped" in got.error
        # Tried alone as many times as the worker gives it, then written without them.
        assert finishes.sizes.count(1) >= REFUSALS_BEFORE_STRIPPING

        await until_succeeded(store, 4, "every run to end")


async def test_a_failing_live_output_write_does_not_lose_the_run(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.create_job(
        Job(namespace=NS, id="talks", executor="shell", parameters={"argv": ["echo", "said"]})
    )
    execution = await store.run_job(NS, "talks", {})
    tried = asyncio.Event()

    async def refusing_append(*args: Any, **kwargs: Any) -> Any:
        tried.set()
        raise ValueError("refused")

    monkeypatch.setattr(store, "append_logs", refusing_append)
    async with running_pool(store, slots=1):

        async def succeeded() -> bool:
            got = await store.get_execution(NS, execution.id)
            return got.state == ExecutionState.SUCCEEDED and got.output == "said\n"

        await eventually(succeeded, 15, "the run to succeed with its output, its live output refused")
        assert tried.is_set()


async def test_a_runs_live_output_is_stored_before_its_outcome(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The periodic flush may be writing a run's last chunk when its code ends: the outcome waits
    for that write, so whoever sees the run ended finds all of its live output."""
    exited = tmp_path / "exited"
    await store.create_job(
        Job(
            namespace=NS,
            id="talks",
            executor="shell",
            # Says something, leaves the periodic flush time to take it, then ends.
            parameters={
                "argv": ["sh", "-c", f"echo said; sleep {3 * workers.OUTPUT_FLUSH_INTERVAL}; touch {exited}"]
            },
        )
    )
    execution = await store.run_job(NS, "talks", {})
    writing, release = asyncio.Event(), asyncio.Event()
    stored_at_finish: list[bool] = []
    append, finish = store.append_logs, store.finish_executions

    async def held_append(*args: Any, **kwargs: Any) -> Any:
        writing.set()
        await release.wait()
        return await append(*args, **kwargs)

    async def checked_finish(*args: Any, **kwargs: Any) -> Any:
        stored_at_finish.append(bool(await store.read_logs(NS, execution.id, 0, 10)))
        return await finish(*args, **kwargs)

    monkeypatch.setattr(store, "append_logs", held_append)
    monkeypatch.setattr(store, "finish_executions", checked_finish)
    async with running_pool(store, slots=1) as pool:
        await eventually(writing.is_set, 15, "the periodic flush to write the run's output")

        def code_ended() -> bool:
            return exited.exists() and all(r.finishing for r in pool._running.values())

        await eventually(code_ended, 15, "the run's code to end while its output is being written")
        release.set()

        async def succeeded() -> bool:
            return (await store.get_execution(NS, execution.id)).state == ExecutionState.SUCCEEDED

        await eventually(succeeded, 15, "the run to succeed")
    assert stored_at_finish == [True]
