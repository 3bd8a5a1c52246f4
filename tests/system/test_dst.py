"""Catching up daily crons across the spring-forward change in Berlin: stored schedules run every day."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from cronwire.v1 import execution_pb2
from tests.support import wait_for
from tests.system.helpers import (
    NAMESPACE,
    Replicas,
    all_ended,
    describe,
    seconds,
    set_next_fire_time,
    utc,
)

BERLIN = ZoneInfo("Europe/Berlin")
SUCCEEDED = execution_pb2.EXECUTION_STATE_SUCCEEDED
# 09:00 in Berlin: 08:00Z in CET until Sunday 30 March 2025, 07:00Z in CEST from then on.
EXPECTED = [
    datetime(2025, 3, 27, 8, tzinfo=UTC),
    datetime(2025, 3, 28, 8, tzinfo=UTC),
    datetime(2025, 3, 29, 8, tzinfo=UTC),
    datetime(2025, 3, 30, 7, tzinfo=UTC),
    datetime(2025, 3, 31, 7, tzinfo=UTC),
    datetime(2025, 4, 1, 7, tzinfo=UTC),
]


def test_a_daily_cron_caught_up_across_dst_fires_at_nine_berlin_time(
    database_url: str, replicas: Replicas
) -> None:
    server = replicas.start(database_url)
    api = replicas.api(server)
    job = api.create_job("morning", "noop")
    schedule = api.create_schedule(
        "nine-in-berlin",
        job.name,
        trigger={"cron": {"expression": "0 9 * * *"}},
        timeZone="Europe/Berlin",
        misfirePolicy="MISFIRE_POLICY_RUN_ALL",
        catchupWindow=seconds(timedelta(days=1000)),
        startTime="2025-03-27T00:00:00Z",
        endTime="2025-04-02T00:00:00Z",
        paused=True,
    )
    assert schedule.paused
    # Real time cannot be moved back: move the schedule's next tick into the past instead.
    set_next_fire_time(database_url, NAMESPACE, "nine-in-berlin", EXPECTED[0])
    api.resume(schedule.name)

    executions = wait_for(
        all_ended(api, schedule=schedule.name, at_least=len(EXPECTED)),
        20,
        "the missed ticks to be caught up",
        interval=0.1,
    )
    listing = describe(executions)
    assert sorted(utc(e.scheduled_time) for e in executions) == EXPECTED, listing
    assert {utc(e.scheduled_time).astimezone(BERLIN).strftime("%H:%M") for e in executions} == {"09:00"}
    assert all(
        e.state == SUCCEEDED and e.trigger == execution_pb2.EXECUTION_TRIGGER_SCHEDULE for e in executions
    ), listing
    # The next tick, 2 April, is past the end: the schedule is done.
    assert not api.get_schedule(schedule.name).HasField("next_fire_time")
    assert server.stop(signal.SIGTERM) == 0, server.log()


def _z(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 3, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "policy", "expected"),
    [
        # Midnight, then midnight CEST: APScheduler 3 skipped 31 March, the day after the change.
        ("0 0 * * *", "DST_POLICY_DEBIAN", [_z(27, 23), _z(28, 23), _z(29, 23), _z(30, 22), _z(31, 22)]),
        # 02:30 does not exist on 30 March: it runs at the jump (03:00 CEST, 01:00Z)...
        ("30 2 * * *", "DST_POLICY_DEBIAN", [_z(28, 1, 30), _z(29, 1, 30), _z(30, 1), _z(31, 0, 30)]),
        # ... or not at all.
        ("30 2 * * *", "DST_POLICY_SKIP", [_z(28, 1, 30), _z(29, 1, 30), _z(31, 0, 30)]),
    ],
)
def test_a_stored_cron_runs_every_day_around_the_spring_change(
    database_url: str, replicas: Replicas, expression: str, policy: str, expected: list[datetime]
) -> None:
    server = replicas.start(database_url)
    api = replicas.api(server)
    job = api.create_job("nightly", "noop")
    schedule = api.create_schedule(
        "nightly",
        job.name,
        trigger={"cron": {"expression": expression, "dstPolicy": policy}},
        timeZone="Europe/Berlin",
        misfirePolicy="MISFIRE_POLICY_RUN_ALL",
        catchupWindow=seconds(timedelta(days=1000)),
        startTime="2025-03-27T12:00:00Z",
        endTime="2025-04-01T00:00:00Z",
        paused=True,
    )
    set_next_fire_time(database_url, NAMESPACE, "nightly", expected[0])
    api.resume(schedule.name)

    executions = wait_for(
        all_ended(api, schedule=schedule.name, at_least=len(expected)),
        20,
        "the missed ticks to be caught up",
        interval=0.1,
    )
    assert sorted(utc(e.scheduled_time) for e in executions) == expected, describe(executions)
    assert not api.get_schedule(schedule.name).HasField("next_fire_time")
    assert server.stop(signal.SIGTERM) == 0, server.log()
