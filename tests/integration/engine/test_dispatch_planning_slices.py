"""Planning a dispatch batch is the event loop's work, between the batch's statements: it lets
what is due meanwhile run every few milliseconds (above all the runs taken ahead, waiting on a
timer to start at their due time), instead of holding the loop for the whole batch."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from cronwire_server.core.model import Job, Schedule
from cronwire_server.core.planning import ScheduleActivity, TickPlan
from cronwire_server.dispatcher import Dispatcher
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
