"""Which jobs a worker pool counts quick: those whose last runs each ended within QUICK_RUN, with
no run of theirs going longer (their ticks taken ahead then hold no slot while they wait)."""

from __future__ import annotations

import pytest

from cronwire_server import quick_jobs
from cronwire_server.quick_jobs import QUICK_AFTER, QUICK_RUN, QuickJobs

JOB = ("ns", "job")
OTHER = ("ns", "other")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(jobs: QuickJobs, clock: Clock, job: tuple[str, str], token: str, seconds: float) -> None:
    jobs.began(job, token)
    clock.now += seconds
    jobs.ended(job, token)


def test_a_job_is_quick_after_enough_quick_runs_in_a_row_and_slow_again_after_one_slow_run() -> None:
    clock = Clock()
    jobs = QuickJobs(clock)
    for n in range(QUICK_AFTER - 1):
        run(jobs, clock, JOB, f"r{n}", QUICK_RUN / 2)
        assert JOB not in jobs
        assert not jobs.any()
    run(jobs, clock, JOB, "last", QUICK_RUN)
    assert JOB in jobs
    assert jobs.any()
    assert OTHER not in jobs
    run(jobs, clock, JOB, "slow", QUICK_RUN * 2)
    assert JOB not in jobs
    assert not jobs.any()


def test_a_run_going_longer_than_a_quick_one_makes_its_job_slow_until_it_ends() -> None:
    clock = Clock()
    jobs = QuickJobs(clock)
    for n in range(QUICK_AFTER):
        run(jobs, clock, JOB, f"r{n}", 0.0)
    jobs.began(JOB, "hung")
    jobs.began(OTHER, "other")
    assert JOB in jobs  # just begun
    assert jobs.slow_runs() == 0
    clock.now += QUICK_RUN * 2
    assert JOB not in jobs
    assert jobs.slow_runs() == 2
    jobs.ended(OTHER, "other")
    assert jobs.slow_runs() == 1
    jobs.ended(JOB, "hung")  # it ended slow: the streak starts again
    assert JOB not in jobs
    assert jobs.slow_runs() == 0
    jobs.ended(JOB, "hung")  # a run ends once; told again, nothing changes
    assert jobs.slow_runs() == 0


def test_a_job_is_untried_until_one_of_its_runs_ends_here_and_again_once_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(quick_jobs, "REMEMBERED", 1)
    clock = Clock()
    jobs = QuickJobs(clock)
    assert JOB in jobs.untried()
    jobs.began(JOB, "first")
    assert JOB in jobs.untried()  # going, not ended
    clock.now += QUICK_RUN * 2
    jobs.ended(JOB, "first")  # slow: tried, and not quick
    assert JOB not in jobs.untried()
    assert JOB not in jobs
    run(jobs, clock, OTHER, "other", 0.0)  # the one job remembered now
    assert OTHER not in jobs.untried()
    assert JOB in jobs.untried()
    assert "not a job" not in jobs.untried()


def test_the_least_recently_run_jobs_are_forgotten_beyond_what_is_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(quick_jobs, "REMEMBERED", 3)
    clock = Clock()
    jobs = QuickJobs(clock)
    names = [("ns", f"job-{n}") for n in range(4)]
    for name in names:
        for n in range(QUICK_AFTER):
            run(jobs, clock, name, f"{name[1]}-{n}", 0.0)
    assert names[0] not in jobs  # forgotten: counted slow again
    assert all(name in jobs for name in names[1:])
    for name in names[1:]:
        run(jobs, clock, name, "slow", QUICK_RUN * 2)
    assert not jobs.any()


def test_the_quicker_runs_have_been_ending_the_more_runs_ahead_a_slot_may_have_waiting() -> None:
    fewest, most = 16, 64
    clock = Clock()
    jobs = QuickJobs(clock)
    # No run yet: the fewest, as for runs as slow as a quick one may be.
    assert jobs.ahead_per_slot(fewest, most) == fewest
    for n in range(200):
        run(jobs, clock, JOB, f"noop-{n}", QUICK_RUN / 100)
    assert jobs.ahead_per_slot(fewest, most) == most  # more, up to `most`
    # A slow run makes its job slow, and leaves the pace of quick runs as it was.
    run(jobs, clock, JOB, "slow", QUICK_RUN * 20)
    assert JOB not in jobs
    assert jobs.ahead_per_slot(fewest, most) == most
    # Quick runs that take longer bring it down, never below the fewest.
    for n in range(50):
        run(jobs, clock, JOB, f"half-{n}", QUICK_RUN / 2)
    assert fewest < jobs.ahead_per_slot(fewest, most) < most
    for n in range(200):
        run(jobs, clock, JOB, f"quick-{n}", QUICK_RUN)
    assert jobs.ahead_per_slot(fewest, most) == fewest
