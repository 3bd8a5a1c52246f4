"""Ticks missed while no replica ran: the next replica applies the schedule's misfire policy."""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from cronwire.v1 import execution_pb2
from tests.integration.helpers import ACTIVE, Execution, Replicas, describe, seconds, utc
from tests.support import wait_for

INTERVAL = timedelta(seconds=2)
GRACE = timedelta(seconds=1)
# Long enough for at least three ticks to fall strictly inside the downtime, late by more than GRACE.
DOWNTIME = 7.5
SUCCEEDED = execution_pb2.EXECUTION_STATE_SUCCEEDED
SKIPPED = execution_pb2.EXECUTION_STATE_SKIPPED
MISSED = execution_pb2.SKIP_REASON_MISSED


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
    stopped = datetime.now().astimezone()
    down_since = time.monotonic()

    wait_for(lambda: time.monotonic() - down_since >= DOWNTIME, DOWNTIME + 5, "the downtime to pass")
    restarted = datetime.now().astimezone()
    second = replicas.start(url, *flags)
    api = replicas.api(second)

    def settled() -> list[Execution] | None:
        found = api.executions_of(schedule=schedule)
        after_restart = [e for e in found if utc(e.scheduled_time) > restarted and e.state == SUCCEEDED]
        if not after_restart or any(e.state in ACTIVE and utc(e.scheduled_time) < restarted for e in found):
            return None
        return found

    executions = wait_for(settled, 20, "the missed ticks handled and a new tick run", interval=0.2)
    api.pause(schedule)
    assert second.stop(signal.SIGTERM) == 0, second.log()
    listing = describe(executions)

    # One record per tick, none twice, none left out, from the first tick on.
    ticks = sorted(utc(e.scheduled_time) for e in executions)
    assert all(b - a == INTERVAL for a, b in itertools.pairwise(ticks)), listing

    # The server's own rule: a tick recorded more than GRACE after its time was missed.
    missed = [e for e in executions if utc(e.create_time) - utc(e.scheduled_time) > GRACE]
    surely_missed = [e for e in executions if stopped < utc(e.scheduled_time) < restarted - GRACE]
    assert len(surely_missed) >= 3, listing
    assert {e.name for e in surely_missed} <= {e.name for e in missed}, listing

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
        assert len(ran) == 1, listing
    else:
        assert not skipped, listing
    for execution in ran:
        assert execution.worker, listing
        assert utc(execution.start_time) >= utc(execution.scheduled_time), listing
