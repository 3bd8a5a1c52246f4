"""Which jobs' runs end quickly in this worker pool: a tick of such a job taken ahead of its due
time need not hold a slot while it waits, since the slot it takes when due is given back a
moment later (see `WorkerPool.reserve`).

A job is quick once its last runs here each ended within `QUICK_RUN` and no run of it has been
going longer; one slower run, or one going long (a hung webhook), makes it slow again at once.
The pace of quick runs (how long each held its slot, on average) tells how many runs taken ahead
a slot may have waiting (`ahead_per_slot`).

A job no run of which has ended here yet is untried (`untried`): the pool may take its ticks
ahead as a quick job's while none of its runs is going long, so that a new job's first ticks
start on time; its first runs then tell.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Mapping

# A run holding its slot no longer than this gives it back well within the look-ahead.
QUICK_RUN = 0.05
# Runs in a row that ended that quickly before a job counts as quick.
QUICK_AFTER = 3
# Jobs remembered; the least recently ended are forgotten first (then counted slow).
REMEMBERED = 10_000
# The weight of each quick run's time in the pace (a moving average), which starts at QUICK_RUN.
PACE_WEIGHT = 0.05

JobKey = tuple[str, str]  # (namespace, job id)


class QuickJobs:
    """The runs going in one pool, by job, and each job's streak of quick runs."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._streaks: dict[JobKey, int] = {}
        self._quick = 0  # jobs with a streak of QUICK_AFTER or more
        self._going: dict[JobKey, dict[str, float]] = {}  # job -> run token -> began (monotonic)
        self._pace = QUICK_RUN

    def began(self, job: JobKey, token: str) -> None:
        self._going.setdefault(job, {})[token] = self._clock()

    def ended(self, job: JobKey, token: str) -> None:
        going = self._going.get(job)
        began = going.pop(token, None) if going is not None else None
        if began is None:
            return
        if not going:
            del self._going[job]
        was = self._streaks.pop(job, 0)  # re-inserted last: the most recently ended
        took = self._clock() - began
        quick = took <= QUICK_RUN
        self._set(job, was + 1 if quick else 0, was)
        if quick:
            self._pace += PACE_WEIGHT * (took - self._pace)
        if len(self._streaks) > REMEMBERED:
            forgotten = self._streaks.pop(next(iter(self._streaks)))
            self._quick -= forgotten >= QUICK_AFTER

    def _set(self, job: JobKey, streak: int, was: int) -> None:
        self._streaks[job] = streak
        self._quick += (streak >= QUICK_AFTER) - (was >= QUICK_AFTER)

    def ahead_per_slot(self, fewest: int, most: int) -> int:
        """How many runs taken ahead each slot may have waiting: as many as would start, at the
        pace quick runs have been ending, in the time `fewest` runs of `QUICK_RUN` each would
        take (so `fewest` when they are that slow), at most `most`."""
        return max(fewest, min(most, int(fewest * QUICK_RUN / max(self._pace, 1e-6))))

    def untried(self) -> Container[JobKey]:
        """The jobs no run of which has ended in this pool, or that it has forgotten since."""
        return _Untried(self._streaks)

    def any(self) -> bool:
        """Whether some job is quick, going runs aside."""
        return self._quick > 0

    def slow_runs(self) -> int:
        """Runs going longer than a quick one would."""
        since = self._clock() - QUICK_RUN
        return sum(1 for runs in self._going.values() for began in runs.values() if began < since)

    def __contains__(self, job: object) -> bool:
        if not isinstance(job, tuple) or self._streaks.get(job, 0) < QUICK_AFTER:
            return False
        since = self._clock() - QUICK_RUN
        return all(began >= since for began in self._going.get(job, {}).values())


class _Untried(Container[JobKey]):
    __slots__ = ("_streaks",)

    def __init__(self, streaks: Mapping[JobKey, int]) -> None:
        self._streaks = streaks

    def __contains__(self, job: object) -> bool:
        return isinstance(job, tuple) and job not in self._streaks
