"""Deadlines of a schedule's ticks: when each falls, and which a tick has missed by `now` (the
database's clock). Alerts only: nothing here stops a run.

- `start_within`: a tick not started that long after its time is LATE, whether it waits QUEUED
  (no worker free, none running) or was not even dispatched (no dispatcher running).
- `finish_by`: a tick not ended by then is MISSED. A wall-clock `HH:MM` is the first such time in
  the schedule's zone after the tick, so a deadline across a daylight-saving change keeps its
  wall time (09:30 is 09:30 local on either side, not 24 hours after yesterday's 09:30); a time the
  change skips is read with the offset before the change (02:30 on a spring-forward night is 03:30
  after the jump), a repeated one as its first occurrence.
- `max_duration`: an execution running longer is TOO_LONG.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from cronwire_server.core.model import DeadlineKind, DeadlineMiss, Deadlines


@dataclass(frozen=True)
class Candidate:
    """A tick that has not ended: dispatched (`execution_id`) or not yet."""

    namespace: str
    schedule_id: str
    job_id: str
    deadlines: Deadlines
    time_zone: str
    scheduled_time: datetime
    execution_id: str = ""
    started: datetime | None = None  # when RUNNING


def finish_deadline(deadlines: Deadlines, tick: datetime, time_zone: str) -> datetime | None:
    """When a tick at `tick` must have ended, or None."""
    if deadlines.finish_by_after is not None:
        return tick + deadlines.finish_by_after
    minutes = deadlines.finish_by_local_minutes
    if minutes is None:
        return None
    zone = ZoneInfo(time_zone)
    day = tick.astimezone(zone).date()
    hours, mins = divmod(minutes % (24 * 60), 60)
    for _ in range(3):
        # fold=0: a repeated wall time is its first occurrence; a skipped one takes the offset
        # before the change, which puts it after the jump.
        local = datetime.combine(day, time(hours, mins), tzinfo=zone)
        deadline = local.astimezone(UTC)
        if deadline > tick:
            return deadline
        day += timedelta(days=1)
    raise AssertionError("a wall time recurs within three days")  # pragma: no cover


def misses(candidate: Candidate, now: datetime) -> Iterator[DeadlineMiss]:
    """The deadlines `candidate` has missed by `now`."""
    d = candidate.deadlines
    tick = candidate.scheduled_time
    if d.start_within is not None and candidate.started is None and tick + d.start_within <= now:
        yield DeadlineMiss(DeadlineKind.START_WITHIN, tick, tick + d.start_within, candidate.execution_id)
    finish = finish_deadline(d, tick, candidate.time_zone)
    if finish is not None and finish <= now:
        yield DeadlineMiss(DeadlineKind.FINISH_BY, tick, finish, candidate.execution_id)
    if (
        d.max_duration is not None
        and candidate.started is not None
        and candidate.started + d.max_duration <= now
    ):
        yield DeadlineMiss(
            DeadlineKind.MAX_DURATION, tick, candidate.started + d.max_duration, candidate.execution_id
        )
