"""Planning a dispatch batch is the event loop's work, between the batch's statements: it lets
what is due meanwhile run every few milliseconds (above all the runs taken ahead, waiting on a
timer to start at their due time), instead of holding the loop for the whole batch."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import pytest

from cronwire_server.core.model import Job, Schedule
from cronwire_server.core.planning import ScheduleActivity, TickPlan
from cronwire_server.dispatcher import Dispatcher
from cronwire_server.storage import sql_dispatch
from cronwire_server.storage.sql_dispatch import PLANNING_SLICE
from cronwire_server.storage.sql_store import SqlStore
from tests.integration.engine.test_fused_dispatch import NS, due_schedules

SCHEDULES = 12


async def test_the_loop_runs_between_the_plans_of_a_batch(store: SqlStore) -> None:
    await due_schedules(store, Job(namespace=NS, id="planned", executor="noop", parameters={}), SCHEDULES)
    loop = asyncio.get_running_loop()
    dispatcher = Dispatcher(store)
    turns = 0  # loop turns taken while the batch was planned, past the first plan
    seen_at_plans: list[int] = []

    def turn() -> None:
        nonlocal turns
        turns += 1
        loop.call_soon(turn)  # again at every turn of the loop, until the batch is planned

    def plan(schedule: Schedule, now: datetime, activity: ScheduleActivity, until: datetime) -> TickPlan:
        if not seen_at_plans:
            loop.call_soon(turn)
        seen_at_plans.append(turns)
        # Each plan takes half a slice: the batch takes several slices in all.
        busy_until = time.monotonic() + PLANNING_SLICE / 2
        while time.monotonic() < busy_until:
            pass
        return dispatcher.plan(schedule, now, activity, until)

    result = await store.dispatch_due(plan, limit=100)
    assert result.queued == SCHEDULES
    # No statement is sent between two plans: the loop ran there only because the planning let it.
    assert seen_at_plans[-1] > 0, f"the loop never ran while {SCHEDULES} schedules were planned"
    assert len(set(seen_at_plans)) >= SCHEDULES // 3, seen_at_plans


async def test_the_loop_runs_between_the_last_plan_and_the_ticks_statement(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The statement writing the ticks is built in one go: begun with less than half a slice
    # left, it would hold the loop for most of another.
    await due_schedules(store, Job(namespace=NS, id="planned", executor="noop", parameters={}), 2)
    loop = asyncio.get_running_loop()
    dispatcher = Dispatcher(store)
    turns = 0
    at_last_plan: list[int] = []
    at_statement: list[int] = []

    def turn() -> None:
        nonlocal turns
        turns += 1
        loop.call_soon(turn)

    def plan(schedule: Schedule, now: datetime, activity: ScheduleActivity, until: datetime) -> TickPlan:
        if not at_last_plan:
            loop.call_soon(turn)
        # The first plan takes a quarter of a slice, the second more than half: no pause
        # between them, and the slice is more than half spent when the planning ends.
        busy_until = time.monotonic() + PLANNING_SLICE * (0.25 if not at_last_plan else 0.6)
        while time.monotonic() < busy_until:
            pass
        at_last_plan[:] = [turns]
        return dispatcher.plan(schedule, now, activity, until)

    def noting(insert: Any) -> Any:
        def noted(*args: Any) -> Any:
            at_statement.append(turns)
            return insert(*args)

        return noted

    for name in ("_insert_ticks", "_insert_ignoring_duplicate_ticks"):
        monkeypatch.setattr(sql_dispatch, name, noting(getattr(sql_dispatch, name)))
    result = await store.dispatch_due(plan, limit=100)
    assert result.queued == 2
    assert at_statement, "the ticks' statement was not built"
    assert at_statement[0] > at_last_plan[0], "the loop did not run between the last plan and the statement"
