"""Ticks missed while no replica ran: the next replica applies the schedule's misfire policy,
however many ticks it missed, without holding up the other schedules."""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cronwire.v1 import execution_pb2
from tests.support import wait_for
from tests.system.helpers import (
    ACTIVE,
    NAMESPACE,
    QUEUED,
    Api,
    Execution,
    Replicas,
    describe,
    seconds,
    set_next_fire_time,
    utc,
)

INTERVAL = timedelta(seconds=2)
GRACE = timedelta(seconds=1)
# Long enough for at least three ticks to fall strictly inside the downtime, late by more than GRACE.
DOWNTIME = 7.5
SUCCEEDED = execution_pb2.EXECUTION_STATE_SUCCEEDED
SKIPPED = execution_pb2.EXECUTION_STATE_SKIPPED
MISSED = execution_pb2.SKIP_REASON_MISSED
# More ticks than one dispatcher pass plans for a schedule (planning.MAX_TICKS_PER_PASS = 1000).
BACKLOG = 3001
SECOND = timedelta(seconds=1)
# A tick of a schedule due now starts within this of its time, however busy another schedule is.
PROMPT = timedelta(seconds=3)


def serving(api: Api) -> bool:
    """Whether the replica behind `api` reports SERVING on gRPC health."""
    try:
        response = health_pb2_grpc.HealthStub(api.channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    except grpc.RpcError:
        return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def late(execution: Execution, grace: timedelta) -> bool:
    """The server's own rule: a tick recorded more than `grace` after its time was missed."""
    return utc(execution.create_time) - utc(execution.scheduled_time) > grace


@pytest.mark.postgres
@pytest.mark.parametrize("policy", ["SKIP", "RUN_ONCE", "RUN_ALL"])
def test_ticks_missed_while_no_replica_ran_follow_the_misfire_policy(
    policy: str, fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    url = fresh_database_url("postgres")
    flags = ("--misfire-grace-seconds", f"{GRACE.total_seconds():g}")
    first = replicas.start(url, *flags)
    api = replicas.api(first)
    job = api.create_job("beat", "noop")
    schedule = api.create_schedule(
        "every-2s",
        job.name,
        trigger={"interval": {"every": seconds(INTERVAL)}},
        misfirePolicy=f"MISFIRE_POLICY_{policy}",
    ).name
    wait_for(
        lambda: any(e.state == SUCCEEDED for e in api.executions_of(schedule=schedule)),
        10,
        "a first tick to run",
        interval=0.1,
    )
    assert first.stop(signal.SIGTERM) == 0, first.log()
    stopped = datetime.now(UTC)
    down_since = time.monotonic()

    wait_for(lambda: time.monotonic() - down_since >= DOWNTIME, DOWNTIME + 5, "the downtime to pass")
    second = replicas.start(url, *flags)
    api = replicas.api(second)
    wait_for(lambda: serving(api), 30, "the second replica to report SERVING", interval=0.1)

    def first_pass() -> datetime | None:
        # The server's own time of its first dispatcher pass: every record it wrote then has it.
        after_stop = [
            utc(e.create_time) for e in api.executions_of(schedule=schedule) if utc(e.create_time) > stopped
        ]
        return min(after_stop) if after_stop else None

    restarted = wait_for(first_pass, 20, "the second replica to record the missed ticks", interval=0.1)

    def settled() -> list[Execution] | None:
        found = api.executions_of(schedule=schedule)
        after_restart = [e for e in found if utc(e.scheduled_time) > restarted and e.state == SUCCEEDED]
        # Every tick recorded late (the outage's, or one fired late later) has ended.
        pending = [
            e for e in found if e.state in ACTIVE and (late(e, GRACE) or utc(e.scheduled_time) < restarted)
        ]
        return found if after_restart and not pending else None

    executions = wait_for(settled, 30, "the missed ticks handled and a new tick run", interval=0.2)
    api.pause(schedule)
    assert second.stop(signal.SIGTERM) == 0, second.log()
    listing = describe(executions)

    # One record per tick, none twice, none left out, from the first tick on.
    ticks = sorted(utc(e.scheduled_time) for e in executions)
    assert all(b - a == INTERVAL for a, b in itertools.pairwise(ticks)), listing

    missed = [e for e in executions if late(e, GRACE)]
    surely_missed = [e for e in executions if stopped < utc(e.scheduled_time) < restarted - GRACE]
    assert len(surely_missed) >= 3, listing
    assert {e.name for e in surely_missed} <= {e.name for e in missed}, listing
    # The outage's misfires; a tick the second replica fired late later on is a misfire of its own.
    outage = [e for e in missed if utc(e.scheduled_time) < restarted]

    ran = [e for e in missed if e.state == SUCCEEDED]
    skipped = [e for e in missed if e.state == SKIPPED]
    assert len(ran) + len(skipped) == len(missed), listing
    for execution in skipped:
        assert execution.skip_reason == MISSED, listing
        assert not execution.HasField("start_time"), listing
        assert not execution.worker, listing
    if policy == "SKIP":
        assert not ran, listing
    elif policy == "RUN_ONCE":
        assert [e.state for e in outage].count(SUCCEEDED) == 1, listing
    else:
        assert not skipped, listing
    for execution in ran:
        assert execution.worker, listing
        assert utc(execution.start_time) >= utc(execution.scheduled_time), listing


def every_second(api: Api, schedule_id: str, job: str, policy: str) -> str:
    """A schedule that fires every second from two hours ago (so that older ticks are its own)."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    return api.create_schedule(
        schedule_id,
        job,
        trigger={"interval": {"every": seconds(SECOND)}},
        startTime=start.isoformat().replace("+00:00", "Z"),
        misfirePolicy=f"MISFIRE_POLICY_{policy}",
    ).name


def give_backlog(api: Api, url: str, schedule: str, ticks: int) -> tuple[datetime, datetime]:
    """Move the schedule's next fire time `ticks` ticks back, as if no replica had run for that
    long; returns the first missed tick and the next fire time it had (the backlog's end)."""
    due = utc(api.get_schedule(schedule).next_fire_time)
    set_next_fire_time(url, NAMESPACE, schedule.rsplit("/", 1)[1], due - ticks * SECOND)
    return due - ticks * SECOND, due


@pytest.mark.postgres
def test_run_once_runs_one_catch_up_for_more_missed_ticks_than_a_pass_plans(
    fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    url = fresh_database_url("postgres")
    server = replicas.start(url)  # the default grace of 5 s
    grace = timedelta(seconds=5)
    api = replicas.api(server)
    job = api.create_job("beat", "noop")
    schedule = every_second(api, "every-second", job.name, "RUN_ONCE")
    first_missed, backlog_end = give_backlog(api, url, schedule, BACKLOG)

    def settled() -> list[Execution] | None:
        found = [e for e in api.executions_of(schedule=schedule) if utc(e.scheduled_time) >= first_missed]
        backlog = [e for e in found if utc(e.scheduled_time) < backlog_end]
        after = [e for e in found if utc(e.scheduled_time) >= backlog_end and e.state == SUCCEEDED]
        pending = [e for e in found if late(e, grace) and e.state in ACTIVE]
        return found if len(backlog) >= BACKLOG and after and not pending else None

    executions = wait_for(settled, 60, "the backlog recorded, its catch-up and a new tick run", interval=0.5)
    api.pause(schedule)
    listing = describe(executions[-20:])

    ticks = sorted(utc(e.scheduled_time) for e in executions)
    assert ticks[0] == first_missed, listing
    assert all(b - a == SECOND for a, b in itertools.pairwise(ticks)), "a tick recorded twice or left out"

    missed = sorted((e for e in executions if late(e, grace)), key=lambda e: utc(e.scheduled_time))
    ran = [e for e in missed if e.state != SKIPPED]
    assert len(ran) == 1, f"{len(ran)} catch-up runs for {len(missed)} missed ticks:\n{describe(ran)}"
    # The catch-up is the latest missed tick; the others are recorded as missed.
    assert ran[0].name == missed[-1].name, listing
    assert ran[0].state == SUCCEEDED, listing
    assert all(e.skip_reason == MISSED for e in missed[:-1]), listing


@pytest.mark.postgres
def test_a_run_all_backlog_does_not_delay_another_schedules_current_ticks(
    fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    url = fresh_database_url("postgres")
    server = replicas.start(url)
    api = replicas.api(server)
    job = api.create_job("beat", "noop")
    other_job = api.create_job("other", "noop")
    other = every_second(api, "on-time", other_job.name, "SKIP")
    behind = every_second(api, "behind", job.name, "RUN_ALL")
    first_missed, backlog_end = give_backlog(api, url, behind, BACKLOG)

    def backlog_queued() -> datetime | None:
        found = api.executions_of(schedule=behind)
        queued = [e for e in found if utc(e.scheduled_time) >= first_missed and e.state == QUEUED]
        return max(utc(e.create_time) for e in found) if len(queued) > 1000 else None

    queued_at = wait_for(backlog_queued, 30, "the backlog's catch-ups to be queued", interval=0.2)

    def five_current_ticks_ran() -> list[Execution] | None:
        current = [
            e
            for e in api.executions_of(schedule=other)
            if utc(e.scheduled_time) > queued_at and e.HasField("start_time")
        ]
        return current if len(current) >= 5 else None

    current = wait_for(five_current_ticks_ran, 30, "five current ticks of the other schedule to start")
    still_behind = [e for e in api.executions_of(schedule=behind) if e.state == QUEUED]
    api.pause(other)
    api.pause(behind)
    listing = describe(current)

    # The backlog was still there while the other schedule's ticks ran...
    assert len(still_behind) > 100, f"the backlog drained too fast to show anything: {len(still_behind)} left"
    # ... and they ran on time, each in its own execution.
    for execution in current:
        assert execution.state != SKIPPED, listing
        assert utc(execution.start_time) - utc(execution.scheduled_time) < PROMPT, listing
    # Every missed tick of the RUN_ALL schedule is recorded, and to run: none is skipped. (Its
    # ticks on time while its catch-ups run follow its overlap policy, SKIP.)
    backlog = [
        e for e in api.executions_of(schedule=behind) if first_missed <= utc(e.scheduled_time) < backlog_end
    ]
    assert len(backlog) == BACKLOG, len(backlog)
    missed = [e for e in backlog if late(e, timedelta(seconds=5))]
    assert len(missed) > BACKLOG - 10, len(missed)
    assert not [e for e in missed if e.state == SKIPPED], describe(e for e in missed if e.state == SKIPPED)
