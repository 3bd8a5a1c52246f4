"""Overlap policy SKIP: a tick that comes while the previous execution runs is skipped."""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable
from datetime import timedelta

import pytest

from cronwire.v1 import execution_pb2
from tests.support import wait_for
from tests.system.helpers import RUNNING, Replicas, all_ended, describe, utc

OVERLAP = execution_pb2.SKIP_REASON_OVERLAP
SKIPPED = execution_pb2.EXECUTION_STATE_SKIPPED
# A commit racing the overlap check may land a few milliseconds either side of it.
CLOCK_SLACK = timedelta(seconds=0.5)


@pytest.mark.postgres
def test_ticks_during_a_run_are_skipped_and_runs_never_overlap(
    fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    server = replicas.start(fresh_database_url("postgres"))
    api = replicas.api(server)
    job = api.create_job("slow", "shell", parameters={"argv": ["sleep", "3"]})
    schedule = api.create_schedule(
        "every-second",
        job.name,
        trigger={"cron": {"expression": "* * * * * *"}},
        overlapPolicy="OVERLAP_POLICY_SKIP",
    ).name

    def two_runs_and_skips_between() -> bool:
        found = api.executions_of(schedule=schedule)
        running = [e for e in found if e.state == RUNNING]
        assert len(running) <= 1, describe(found)
        started = [e for e in found if e.HasField("start_time")]
        skipped = [e for e in found if e.state == SKIPPED]
        return len(started) >= 2 and len(skipped) >= 3

    wait_for(two_runs_and_skips_between, 20, "two runs and the ticks skipped between them", interval=0.05)
    api.pause(schedule)
    executions = wait_for(
        all_ended(api, schedule=schedule),
        10,
        "the last run to end",
    )
    assert server.stop(signal.SIGTERM) == 0, server.log()
    listing = describe(executions)

    ran = sorted((e for e in executions if e.HasField("start_time")), key=lambda e: utc(e.start_time))
    skipped = [e for e in executions if e.state == SKIPPED]
    assert all(e.state == execution_pb2.EXECUTION_STATE_SUCCEEDED for e in ran), listing
    assert len(ran) + len(skipped) == len(executions), listing
    for before, after in itertools.pairwise(ran):
        assert utc(after.start_time) >= utc(before.end_time), f"two runs overlap:\n{listing}"
    for execution in skipped:
        assert execution.skip_reason == OVERLAP, listing
        assert not execution.worker, listing
        assert not execution.HasField("start_time"), listing
        # Skipped because an execution of the schedule was queued or running when the tick was planned.
        planned = utc(execution.create_time)
        assert any(
            utc(e.create_time) - CLOCK_SLACK <= planned <= utc(e.end_time) + CLOCK_SLACK for e in ran
        ), f"{utc(execution.scheduled_time)} skipped while nothing ran:\n{listing}"
