"""What the dispatcher does with a due schedule, and when a failed attempt runs again.

Pure functions over the domain model: the store runs them inside the
transaction that claims the schedule, so the decisions and the rows they
produce commit together.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cronwire_server.config import Settings
from cronwire_server.core import calendars, triggers
from cronwire_server.core.model import (
    ExecutionState,
    MisfirePolicy,
    OverlapPolicy,
    RetryPolicy,
    Schedule,
    SkipReason,
)

# A tick later than this is a misfire: the schedule's misfire policy decides its fate (the
# server's --misfire-grace-seconds).
DEFAULT_MISFIRE_GRACE = timedelta(seconds=Settings.misfire_grace_seconds)
# What one pass does for one schedule is bounded, whatever its backlog: at most this many ticks
# within the catch-up window become records (one each, whatever the policy); a schedule with more
# keeps its next fire time at the first tick not recorded yet, stays due, and the dispatcher comes
# back to it in its next pass (the schedules due now are in that same pass: none waits for a backlog).
MAX_TICKS_PER_PASS = 1000
# Ticks older than the catch-up window become one SKIPPED record that counts them; the counting
# stops at this many (the record then says "more than"), and the trigger jumps to the window.
MAX_COUNTED_OLD_TICKS = 10_000

RETRIED_STATES = frozenset({ExecutionState.FAILED, ExecutionState.TIMED_OUT, ExecutionState.LOST})

log = logging.getLogger(__name__)

# Jitter's randomness, made once: seeding a generator per plan costs more than the plan.
_RANDOM = random.Random()


def _next_tick(schedule: Schedule, after: datetime, anchor: datetime) -> datetime | None:
    """The trigger's next fire time; None, as for an ended schedule, when its search spends the budget.

    Creating or updating to such a trigger is refused, so this takes a rarer shape found only
    later in its life (an `all_of` whose triggers stop agreeing). One search costs at most
    triggers.SEARCH_STEPS; giving up then keeps the pass, and every other schedule in it, moving.
    """
    try:
        return triggers.next_fire_time(schedule, after, anchor)
    except triggers.TriggerTooExpensive as e:
        log.warning(
            "schedule %s/%s stops firing: its trigger %s; update the trigger to start it again",
            schedule.namespace,
            schedule.id,
            e.message,
        )
        return None


@dataclass(frozen=True)
class ScheduleActivity:
    """The schedule's executions that have not ended, when the pass starts."""

    running: int = 0
    queued: int = 0


@dataclass(frozen=True)
class PlannedRun:
    """One tick's record: QUEUED (skip_reason None) or SKIPPED with a reason."""

    tick: datetime
    due_time: datetime
    skip_reason: SkipReason | None = None
    # Starts only when no other execution of the schedule runs (queue-one, cancel-running, catch-up).
    serial: bool = False
    note: str = ""


@dataclass(frozen=True)
class TickPlan:
    runs: list[PlannedRun] = field(default_factory=list)
    next_fire_time: datetime | None = None
    # Overlap policy CANCEL_RUNNING: stop the schedule's running executions.
    cancel_running: bool = False


def _reason(schedule: Schedule, tick: datetime) -> SkipReason:
    # Ticks before the last resume fell while the schedule was paused.
    if schedule.resumed_at is not None and tick < schedule.resumed_at:
        return SkipReason.PAUSED
    return SkipReason.MISSED


def plan_ticks(
    schedule: Schedule,
    now: datetime,
    activity: ScheduleActivity,
    *,
    anchor: datetime,
    grace: timedelta = DEFAULT_MISFIRE_GRACE,
    rng: random.Random | None = None,
    horizon: datetime | None = None,
) -> TickPlan:
    """Decide what the ticks of `schedule` due by `now` become, and the next fire time; those due
    by `horizon` (later than now) too, for a dispatch that takes them ahead of their time.

    At most MAX_TICKS_PER_PASS ticks of the catch-up window are planned (plus one record for the
    ticks older than it); the next fire time is then the first tick left, still due, for the next
    pass. A backlog spread over several passes is handled as if in one: SKIP records each missed
    tick, RUN_ALL queues each one (run one after another), and RUN_ONCE records each as skipped
    but the latest, which it runs once: in the pass that reaches it, when the next tick is no
    longer late.
    """
    horizon = max(now, horizon or now)
    tick = schedule.next_fire_time
    if tick is None or tick > horizon:
        return TickPlan(next_fire_time=tick)
    runs: list[PlannedRun] = []
    tick = _skip_old_ticks(schedule, tick, now - schedule.catchup_window, anchor, runs)

    due: list[datetime] = []
    visited = 0
    while tick is not None and tick <= horizon and visited < MAX_TICKS_PER_PASS:
        visited += 1
        # A tick the schedule's calendars exclude is recorded as such, whatever the misfire
        # policy: it would not have run on time either.
        excluded = calendars.exclusion(schedule, tick) if calendars.uses_calendars(schedule) else None
        if excluded is not None:
            runs.append(PlannedRun(tick, tick, SkipReason.CALENDAR, note=excluded.note))
        else:
            due.append(tick)
        tick = _next_tick(schedule, tick, anchor)
    late = [t for t in due if now - t > grace]
    on_time = [t for t in due if now - t <= grace]
    # Whether this pass reached the latest missed tick, or a later pass will plan more of them.
    more_late = tick is not None and now - tick > grace

    catch_up: list[datetime] = []
    if schedule.misfire_policy is MisfirePolicy.SKIP:
        runs += [PlannedRun(t, t, _reason(schedule, t), note="missed; misfire policy SKIP") for t in late]
    elif schedule.misfire_policy is MisfirePolicy.RUN_ONCE and more_late:
        note = "missed; coalesced into one run of the latest missed tick (misfire policy RUN_ONCE)"
        runs += [PlannedRun(t, t, _reason(schedule, t), note=note) for t in late]
    elif schedule.misfire_policy is MisfirePolicy.RUN_ONCE and late:
        last = late[-1]
        note = f"missed; coalesced into the run for {last.isoformat()} (misfire policy RUN_ONCE)"
        runs += [PlannedRun(t, t, _reason(schedule, t), note=note) for t in late[:-1]]
        catch_up = [last]
    else:
        catch_up = late

    plan = _Overlap(schedule, activity, rng or _RANDOM)
    for t in catch_up:
        runs.append(plan.catch_up(t))
    for t in on_time:
        # After a catch-up the current tick joins the queue rather than overlapping it.
        runs.append(plan.catch_up(t) if catch_up else plan.on_time(t))
    return TickPlan(runs, tick, plan.cancel_running)


def _skip_old_ticks(
    schedule: Schedule, tick: datetime, window_start: datetime, anchor: datetime, runs: list[PlannedRun]
) -> datetime | None:
    """Fold the ticks older than the catch-up window into one SKIPPED record; return the next tick."""
    first = last = tick
    count = 0
    current: datetime | None = tick
    while current is not None and current < window_start and count < MAX_COUNTED_OLD_TICKS:
        last = current
        count += 1
        current = _next_tick(schedule, current, anchor)
    if count == 0:
        return current
    counted = str(count)
    if current is not None and current < window_start:
        # Too many to count one by one: jump to the window with the trigger's own arithmetic.
        counted = f"more than {MAX_COUNTED_OLD_TICKS}"
        current = _next_tick(schedule, window_start - timedelta(microseconds=1), anchor)
    note = (
        f"{counted} tick(s) from {first.isoformat()} to {last.isoformat()} missed: "
        f"older than the catch-up window ({schedule.catchup_window})"
    )
    runs.append(PlannedRun(first, first, _reason(schedule, first), note=note))
    return current


class _Overlap:
    """Applies the overlap policy tick by tick, counting what this pass queues."""

    def __init__(self, schedule: Schedule, activity: ScheduleActivity, rng: random.Random) -> None:
        self.schedule = schedule
        self.running = activity.running
        self.queued = activity.queued
        self.rng = rng
        self.cancel_running = False

    def _queue(self, tick: datetime, *, serial: bool) -> PlannedRun:
        self.queued += 1
        jitter = self.schedule.jitter
        delay = timedelta(seconds=self.rng.uniform(0, jitter.total_seconds())) if jitter else timedelta(0)
        return PlannedRun(tick, tick + delay, serial=serial)

    def catch_up(self, tick: datetime) -> PlannedRun:
        # Missed ticks that the misfire policy runs go one after another.
        return self._queue(tick, serial=True)

    def on_time(self, tick: datetime) -> PlannedRun:
        policy = self.schedule.overlap_policy
        busy = self.running + self.queued > 0
        if policy is OverlapPolicy.ALLOW_ALL or not busy:
            return self._queue(tick, serial=False)
        if policy is OverlapPolicy.CANCEL_RUNNING:
            self.cancel_running = self.running > 0
            return self._queue(tick, serial=True)
        if policy is OverlapPolicy.QUEUE_ONE and self.queued == 0:
            return self._queue(tick, serial=True)
        note = f"the previous execution was still running (overlap policy {policy.name})"
        return PlannedRun(tick, tick, SkipReason.OVERLAP, note=note)


def retry_due_time(
    policy: RetryPolicy | None,
    attempt: int,
    state: ExecutionState,
    now: datetime,
    rng: random.Random | None = None,
) -> datetime | None:
    """When attempt `attempt + 1` runs after attempt `attempt` ended in `state`; None: no retry."""
    if policy is None or state not in RETRIED_STATES or attempt >= policy.max_attempts:
        return None
    seconds = policy.initial_backoff.total_seconds() * policy.backoff_multiplier ** (attempt - 1)
    seconds = min(seconds, policy.max_backoff.total_seconds())
    if policy.jitter:
        seconds = (rng or _RANDOM).uniform(seconds * (1 - policy.jitter), seconds)
    return now + timedelta(seconds=seconds)
