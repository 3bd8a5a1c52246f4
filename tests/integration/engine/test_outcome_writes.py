"""A worker pool writes the outcomes of a steady stream of runs in batches: a write begins at least
FINISH_LINGER after the one before (the outcomes that end meanwhile wait for it), while an outcome
after a quiet spell is written at once. However long an outcome waits, its run's end time is when
the run ended."""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from cronwire_server import workers
from cronwire_server.core.model import ExecutionState, Job
from cronwire_server.storage.sql_store import SqlStore
from tests.support import RefusingFinishes, eventually, running_pool

NS = "writes"
LINGER = 0.5
# The most a write is noted after the pool began it (`TimedFinishes`): a busy machine's pause.
NOTED_LATE = 0.1


def succeeded(store: SqlStore, *ids: str) -> Callable[[], Awaitable[bool]]:
    """A check for `eventually`: whether every run of `ids` has SUCCEEDED."""

    async def check() -> bool:
        ran = [await store.get_execution(NS, i) for i in ids]
        return all(e.state is ExecutionState.SUCCEEDED for e in ran)

    return check


class TimedFinishes:
    """A store's `finish_executions` that notes when each write began and how many it wrote."""

    def __init__(self, store: SqlStore) -> None:
        self._finish = store.finish_executions
        self.writes: list[tuple[float, int]] = []

    async def __call__(self, items: list[Any], *args: Any, **kwargs: Any) -> Any:
        self.writes.append((time.monotonic(), len(items)))
        return await self._finish(items, *args, **kwargs)


async def test_the_outcomes_of_runs_ending_one_after_another_are_written_together(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "FINISH_LINGER", LINGER)
    await store.create_job(Job(namespace=NS, id="noop", executor="noop", parameters={}))
    finishes = TimedFinishes(store)
    monkeypatch.setattr(store, "finish_executions", finishes)
    async with running_pool(store, slots=1):
        # One run at a time: each ends before the next is queued.
        ids = [(await store.run_job(NS, "noop", {})).id for _ in range(6)]
        await eventually(succeeded(store, *ids), 15, "every run to succeed")
    began = [at for at, _ in finishes.writes]
    assert sum(size for _, size in finishes.writes) == 6
    assert len(began) < 6  # some outcomes waited for the next write, and went with others
    # Noted as each write reaches the store, a moment after the pool began it: two such moments
    # may be that much nearer than the writes' beginnings (without the linger they would be
    # milliseconds apart).
    gaps = [later - earlier for earlier, later in itertools.pairwise(began)]
    assert all(gap >= LINGER - NOTED_LATE for gap in gaps), gaps


async def test_an_outcome_after_a_quiet_spell_is_written_at_once(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Far longer than the test may take: an outcome that waited for it would never be written.
    monkeypatch.setattr(workers, "FINISH_LINGER", 60.0)
    await store.create_job(Job(namespace=NS, id="noop", executor="noop", parameters={}))
    async with running_pool(store, slots=1):
        execution = await store.run_job(NS, "noop", {})
        await eventually(succeeded(store, execution.id), 15, "the run's outcome to be written")


async def test_a_run_s_end_time_is_when_it_ended_not_when_its_outcome_was_written(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.create_job(Job(namespace=NS, id="noop", executor="noop", parameters={}))
    finishes = RefusingFinishes(store)  # writes nothing until opened
    monkeypatch.setattr(store, "finish_executions", finishes)
    async with running_pool(store, slots=1):
        execution = await store.run_job(NS, "noop", {})
        await eventually(finishes.asked.is_set, 15, "the run to end and its outcome to wait")
        held_from = await store.now()

        async def held_a_second() -> bool:
            return await store.now() - held_from >= timedelta(seconds=1)

        await eventually(held_a_second, 15, "a second of the database's clock")
        finishes.open.set()
        await eventually(succeeded(store, execution.id), 15, "the run's outcome to be written")
    ended = await store.get_execution(NS, execution.id)
    assert ended.start_time is not None
    assert ended.end_time is not None
    # A noop run takes milliseconds: its end and its duration are its own, not the second its
    # outcome waited (to within the time the write took to reach the database: milliseconds).
    assert ended.start_time <= ended.end_time < held_from + timedelta(seconds=0.5)
    assert ended.end_time - ended.start_time < timedelta(seconds=0.5)
