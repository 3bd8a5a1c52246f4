"""The dispatcher: turns due schedule ticks into executions, in every replica at once.

The database is the clock's memory: each pass claims due schedules with SKIP
LOCKED, so replicas share the work and a tick fires once. Between passes it
sleeps until the earliest next fire time, woken early when a schedule changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from cronwire_server import metrics
from cronwire_server.core.errors import StorageUnavailable
from cronwire_server.core.model import Schedule, SkipReason
from cronwire_server.core.planning import DEFAULT_MISFIRE_GRACE, ScheduleActivity, TickPlan, plan_ticks
from cronwire_server.storage import Store
from cronwire_server.storage.base import ClaimedExecution, DispatchResult, StartNow
from cronwire_server.supervisor import loop_failed, loop_ok

log = logging.getLogger(__name__)

# Schedules claimed per transaction: large enough to batch inserts, small enough to keep locks short.
BATCH = 200
# The first batch of a pass that may find ticks due already (see `Dispatcher.run_once`).
FIRST_BATCH = 32
# Ticks due within this long are dispatched ahead when the local pool can start them itself (see
# `StartNow`): long enough to batch a steady stream of ticks, short enough to hold few slots idle.
AHEAD = timedelta(milliseconds=200)
# Sleep at most this long even when nothing is due: a safety net for a lost notification.
MAX_SLEEP = 5.0
RETRY_AFTER_ERROR = 1.0


async def sleep_until_woken(store: Store, channel: str, delay: float, stopping: asyncio.Event) -> None:
    """Sleep up to `delay` seconds; return early on a wake-up of `channel` or when stopping."""
    if stopping.is_set():
        return
    await first_of(store.wakeup.wait(channel, delay), stopping.wait())


async def first_of(*waits: Coroutine[Any, Any, Any]) -> None:
    """Return when the first of `waits` does; the others are cancelled."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


class LocalPool(Protocol):
    """The worker pool of this process, which runs what a dispatch starts itself (`WorkerPool`)."""

    def reserve(self, wanted: int, ahead: timedelta) -> StartNow | None: ...

    def adopt(
        self,
        start: StartNow,
        started: Sequence[ClaimedExecution],
        sent: float,
        clock: tuple[float, datetime] | None,
        slotless: frozenset[str] = frozenset(),
    ) -> None: ...


class Dispatcher:
    def __init__(
        self,
        store: Store,
        *,
        grace: timedelta = DEFAULT_MISFIRE_GRACE,
        batch: int = BATCH,
        pool: LocalPool | None = None,
        ahead: timedelta = AHEAD,
    ) -> None:
        self._store = store
        self._grace = grace
        self._batch = batch
        self._pool = pool
        self._ahead = ahead
        self._reach: datetime | None = None  # the last pass's (`DispatchResult.reach`)
        self._woken_ahead = False  # the next pass is woken ahead of its first tick

    def fuse(self, pool: LocalPool) -> None:
        """Start the runs a dispatch creates in `pool` itself while it has free slots: inserted
        RUNNING with its lease, so a tick costs no claim; those due within `ahead` of now too,
        started by the pool's timer at their due time (see `StartNow`)."""
        self._pool = pool

    def plan(
        self, schedule: Schedule, now: datetime, activity: ScheduleActivity, horizon: datetime | None = None
    ) -> TickPlan:
        anchor = schedule.start_time or schedule.create_time or now
        return plan_ticks(schedule, now, activity, anchor=anchor, grace=self._grace, horizon=horizon)

    async def run_once(self) -> int:
        """One pass over everything due now; returns the executions queued."""
        queued = 0
        # A pass woken ahead of its first tick takes a whole batch. Any other may find ticks due
        # already, and a batch's runs start when it has committed (about a quarter of a
        # millisecond per tick): its first batch is small, so that they start soon, and the next
        # ones grow, each ending before the ticks it takes are due in a steady stream.
        limit = self._batch if self._woken_ahead else min(self._batch, FIRST_BATCH)
        self._woken_ahead = False
        while True:
            result = await self._dispatch_batch(limit)
            self._reach = result.reach
            queued += result.queued
            if not result.more:
                return queued
            limit = min(self._batch, 2 * limit)

    async def _dispatch_batch(self, limit: int) -> DispatchResult:
        skipped: list[SkipReason] = []

        def plan(schedule: Schedule, now: datetime, activity: ScheduleActivity, until: datetime) -> TickPlan:
            planned = self.plan(schedule, now, activity, until)
            skipped.extend(run.skip_reason for run in planned.runs if run.skip_reason)
            return planned

        pool = self._pool
        start = pool.reserve(limit, self._ahead) if pool is not None else None
        if start is None:
            result = await self._store.dispatch_due(plan, limit=limit)
        else:
            assert pool is not None
            started: tuple[ClaimedExecution, ...] = ()
            sent = time.monotonic()  # the leases are taken after this
            clock: tuple[float, datetime] | None = None
            slotless: frozenset[str] = frozenset()
            try:
                result = await self._store.dispatch_due(plan, limit=limit, start=start)
                started, clock, slotless = result.started, result.clock, result.slotless
            finally:
                pool.adopt(start, started, sent, clock, slotless)
        metrics.ticks_skipped(skipped)  # counted once the batch has committed
        return result

    async def run(self, stopping: asyncio.Event) -> None:
        log.info("dispatcher started")
        while not stopping.is_set():
            try:
                await self.run_once()
                delay = await self._sleep_time()
                loop_ok()
            except StorageUnavailable as error:
                loop_failed(error)
                log.warning("dispatcher: database unavailable (%s); retrying", error)
                delay = RETRY_AFTER_ERROR
            await sleep_until_woken(self._store, "schedules", delay, stopping)
        log.info("dispatcher stopped")

    async def _sleep_time(self) -> float:
        upcoming, now = await self._store.next_fire_time()
        if upcoming is None:
            return MAX_SLEEP
        wait = (upcoming - now).total_seconds()
        ahead = self._ahead.total_seconds() if self._pool is not None else 0.0
        # Wake half the look-ahead before the next tick beyond the last pass's reach: the pass
        # takes it and the ticks of the next half look-ahead with it, each still well before its
        # time however long the pass takes. (Woken at its due time, a pass started late every
        # tick due while it ran: in a steady stream, those of its first tens of milliseconds.) A
        # tick within reach that the last pass left (the pool could not start it itself) is
        # dispatched when due.
        if wait > ahead or (self._reach is not None and upcoming > self._reach):
            wait -= ahead / 2
            self._woken_ahead = wait > 0
        return max(0.0, min(MAX_SLEEP, wait))
