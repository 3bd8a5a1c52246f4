"""The dispatcher's decisions: misfire and overlap policies, jitter, retries."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta

import pytest

from cronwire_server.core import triggers
from cronwire_server.core.model import (
    AllOfSpec,
    CronSpec,
    ExecutionState,
    IntervalSpec,
    MisfirePolicy,
    OverlapPolicy,
    RetryPolicy,
    Schedule,
    SkipReason,
)
from cronwire_server.core.planning import (
    MAX_COUNTED_OLD_TICKS,
    MAX_TICKS_PER_PASS,
    PlannedRun,
    ScheduleActivity,
    plan_ticks,
    retry_due_time,
)

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def every_minute(**fields: object) -> Schedule:
    values: dict[str, object] = {
        "namespace": "ns",
        "id": "s",
        "job_id": "j",
        "trigger": IntervalSpec(MINUTE),
        "start_time": T0,
        "next_fire_time": T0,
    }
    values.update(fields)
    return Schedule(**values)  # type: ignore[arg-type]


def plan(schedule: Schedule, now: datetime, activity: ScheduleActivity | None = None):  # type: ignore[no-untyped-def]
    return plan_ticks(schedule, now, activity or ScheduleActivity(), anchor=T0, rng=random.Random(7))


def test_nothing_due_keeps_the_next_fire_time() -> None:
    result = plan(every_minute(), T0 - timedelta(seconds=1))
    assert result.runs == []
    assert result.next_fire_time == T0


def test_an_on_time_tick_is_queued_and_the_schedule_advances() -> None:
    result = plan(every_minute(), T0 + timedelta(milliseconds=20))
    assert [(r.tick, r.skip_reason) for r in result.runs] == [(T0, None)]
    assert result.next_fire_time == T0 + MINUTE


def test_misfire_skip_records_every_missed_tick() -> None:
    result = plan(every_minute(misfire_policy=MisfirePolicy.SKIP), T0 + 3 * MINUTE)
    assert [(r.tick, r.skip_reason) for r in result.runs] == [
        (T0, SkipReason.MISSED),
        (T0 + MINUTE, SkipReason.MISSED),
        (T0 + 2 * MINUTE, SkipReason.MISSED),
        (T0 + 3 * MINUTE, None),  # on time: runs
    ]
    assert result.next_fire_time == T0 + 4 * MINUTE


def test_misfire_run_once_coalesces_the_missed_ticks() -> None:
    result = plan(
        every_minute(misfire_policy=MisfirePolicy.RUN_ONCE), T0 + 2 * MINUTE + timedelta(seconds=30)
    )
    assert [(r.tick, r.skip_reason) for r in result.runs] == [
        (T0, SkipReason.MISSED),
        (T0 + MINUTE, SkipReason.MISSED),
        (T0 + 2 * MINUTE, None),
    ]
    assert "coalesced" in result.runs[0].note


def test_misfire_run_all_runs_each_missed_tick_one_after_another() -> None:
    result = plan(every_minute(misfire_policy=MisfirePolicy.RUN_ALL), T0 + 2 * MINUTE + timedelta(seconds=30))
    assert [(r.tick, r.skip_reason, r.serial) for r in result.runs] == [
        (T0, None, True),
        (T0 + MINUTE, None, True),
        (T0 + 2 * MINUTE, None, True),
    ]


def test_ticks_older_than_the_catch_up_window_become_one_record() -> None:
    schedule = every_minute(misfire_policy=MisfirePolicy.RUN_ALL, catchup_window=timedelta(minutes=5))
    now = T0 + timedelta(hours=2)
    result = plan(schedule, now)
    old = result.runs[0]
    assert old.skip_reason is SkipReason.MISSED
    assert old.note.startswith("115 tick(s)")
    queued = [r.tick for r in result.runs if r.skip_reason is None]
    assert queued == [now - timedelta(minutes=m) for m in range(5, -1, -1)]


def test_ticks_missed_while_paused_say_so() -> None:
    schedule = every_minute(
        misfire_policy=MisfirePolicy.SKIP, resumed_at=T0 + 2 * MINUTE + timedelta(seconds=1)
    )
    result = plan(schedule, T0 + 2 * MINUTE + timedelta(seconds=10))
    assert [r.skip_reason for r in result.runs] == [SkipReason.PAUSED] * 3


SECOND = timedelta(seconds=1)
GRACE = timedelta(seconds=5)


def passes(schedule: Schedule, now: datetime, step: timedelta) -> list[tuple[datetime, list[PlannedRun]]]:
    """The dispatcher's passes over `schedule`, `step` apart, each from the next fire time the
    previous one stored, until one leaves it caught up: (the pass's now, its records)."""
    done: list[tuple[datetime, list[PlannedRun]]] = []
    while True:
        result = plan_ticks(schedule, now, ScheduleActivity(), anchor=T0, grace=GRACE, rng=random.Random(7))
        done.append((now, result.runs))
        if result.next_fire_time is None or result.next_fire_time > now:
            return done
        schedule = dataclasses.replace(schedule, next_fire_time=result.next_fire_time)
        now += step
        assert len(done) < 100, "the backlog never ends"


@pytest.mark.parametrize("policy", list(MisfirePolicy))
def test_a_backlog_larger_than_a_pass_keeps_one_record_per_tick_and_the_policy(policy: MisfirePolicy) -> None:
    missed = 3 * MAX_TICKS_PER_PASS + 1
    schedule = every_minute(
        trigger=IntervalSpec(SECOND), misfire_policy=policy, catchup_window=timedelta(hours=1)
    )
    now = T0 + missed * SECOND + timedelta(milliseconds=20)  # the tick at `now` is on time
    done = passes(schedule, now, timedelta(milliseconds=50))

    assert len(done) > 1
    assert all(len(runs) <= MAX_TICKS_PER_PASS for _, runs in done)
    runs = [run for _, runs in done for run in runs]
    assert [r.tick for r in runs] == [T0 + n * SECOND for n in range(len(runs))]
    late = [r for at, runs in done for r in runs if at - r.tick > GRACE]
    assert len(late) >= missed - GRACE / SECOND  # the last ticks are within the grace
    ran = [r for r in late if r.skip_reason is None]
    if policy is MisfirePolicy.SKIP:
        assert ran == []
    elif policy is MisfirePolicy.RUN_ONCE:
        # One catch-up, however many passes the backlog took: the latest missed tick.
        assert [r.tick for r in ran] == [late[-1].tick]
        assert all("coalesced" in r.note for r in late[:-1])
    else:
        assert ran == late
        assert all(r.serial for r in ran)
    assert all(r.skip_reason is SkipReason.MISSED for r in late if r not in ran)
    assert runs[-1].skip_reason is not SkipReason.MISSED  # on time: the overlap policy decides


def test_run_once_coalesces_the_ticks_that_become_late_while_a_backlog_is_worked_through() -> None:
    schedule = every_minute(trigger=IntervalSpec(SECOND), misfire_policy=MisfirePolicy.RUN_ONCE)
    done = passes(schedule, T0 + 2500 * SECOND, timedelta(seconds=30))
    assert len(done) == 3
    late = [r for at, runs in done for r in runs if at - r.tick > GRACE]
    assert len(late) > 2500 + 30
    ran = [r for r in late if r.skip_reason is None]
    assert [r.tick for r in ran] == [late[-1].tick]


def test_a_pass_over_a_month_of_missed_ticks_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    next_fire_time = triggers.next_fire_time

    def counted(schedule: Schedule, after: datetime, anchor: datetime) -> datetime | None:
        nonlocal calls
        calls += 1
        return next_fire_time(schedule, after, anchor)

    monkeypatch.setattr(triggers, "next_fire_time", counted)
    schedule = every_minute(
        trigger=IntervalSpec(SECOND), misfire_policy=MisfirePolicy.RUN_ALL, catchup_window=timedelta(days=1)
    )
    now = T0 + timedelta(days=30)
    result = plan(schedule, now)

    # 2.6 million missed ticks: the pass evaluates the trigger a bounded number of times.
    assert calls <= MAX_COUNTED_OLD_TICKS + MAX_TICKS_PER_PASS + 2 <= 20 * MAX_TICKS_PER_PASS, calls
    assert len(result.runs) == MAX_TICKS_PER_PASS + 1
    old = result.runs[0]
    assert old.skip_reason is SkipReason.MISSED
    assert old.note.startswith(f"more than {MAX_COUNTED_OLD_TICKS} tick(s) from {T0.isoformat()}")
    # The rest starts at the catch-up window and stays due for the next pass.
    assert result.runs[1].tick == now - timedelta(days=1)
    assert result.next_fire_time == now - timedelta(days=1) + MAX_TICKS_PER_PASS * SECOND


@pytest.mark.parametrize(
    ("policy", "activity", "expected"),
    [
        (OverlapPolicy.SKIP, ScheduleActivity(running=1), (SkipReason.OVERLAP, False)),
        (OverlapPolicy.SKIP, ScheduleActivity(), (None, False)),
        (OverlapPolicy.ALLOW_ALL, ScheduleActivity(running=3), (None, False)),
        (OverlapPolicy.QUEUE_ONE, ScheduleActivity(running=1), (None, True)),
        (OverlapPolicy.QUEUE_ONE, ScheduleActivity(running=1, queued=1), (SkipReason.OVERLAP, False)),
        (OverlapPolicy.CANCEL_RUNNING, ScheduleActivity(running=1), (None, True)),
    ],
)
def test_overlap_policies(
    policy: OverlapPolicy, activity: ScheduleActivity, expected: tuple[SkipReason | None, bool]
) -> None:
    result = plan(every_minute(overlap_policy=policy), T0, activity)
    assert [(r.skip_reason, r.serial) for r in result.runs] == [expected]
    assert result.cancel_running == (policy is OverlapPolicy.CANCEL_RUNNING)


def test_jitter_delays_the_start_not_the_tick() -> None:
    result = plan(every_minute(jitter=timedelta(seconds=10)), T0)
    run = result.runs[0]
    assert run.tick == T0
    assert T0 <= run.due_time < T0 + timedelta(seconds=10)


def test_a_cron_schedule_that_ends_has_no_next_fire_time() -> None:
    schedule = every_minute(trigger=CronSpec("0 12 * * *"), end_time=T0 + timedelta(hours=1))
    result = plan(schedule, T0)
    assert [r.tick for r in result.runs] == [T0]
    assert result.next_fire_time is None


def test_a_trigger_that_spends_its_search_budget_stops_the_schedule_not_the_pass(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Stored with a tick due (creating it now is refused); its next search finds no tick it can
    # afford: even minutes never meet minute 1 of the hour.
    never = AllOfSpec((IntervalSpec(2 * MINUTE), CronSpec("1 * * * *")))
    with pytest.raises(triggers.TriggerTooExpensive):
        triggers.next_fire_time(every_minute(trigger=never), T0, T0)
    result = plan(every_minute(trigger=never), T0)
    assert [(r.tick, r.skip_reason) for r in result.runs] == [(T0, None)]
    assert result.next_fire_time is None
    assert "schedule ns/s stops firing" in caplog.text
    assert "trigger.all_of: found no fire time" in caplog.text


def test_retry_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(
        max_attempts=5,
        initial_backoff=timedelta(seconds=2),
        backoff_multiplier=3,
        max_backoff=timedelta(seconds=10),
    )
    delays = [retry_due_time(policy, attempt, ExecutionState.FAILED, T0) for attempt in (1, 2, 3, 4)]
    assert [d - T0 if d else None for d in delays] == [
        timedelta(seconds=2),
        timedelta(seconds=6),
        timedelta(seconds=10),
        timedelta(seconds=10),
    ]
    assert retry_due_time(policy, 5, ExecutionState.FAILED, T0) is None
    assert retry_due_time(policy, 1, ExecutionState.CANCELLED, T0) is None
    assert retry_due_time(policy, 1, ExecutionState.LOST, T0) is not None
    assert retry_due_time(None, 1, ExecutionState.FAILED, T0) is None
