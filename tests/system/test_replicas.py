"""Several replicas on one PostgreSQL database: every tick fires once, and a dead replica's
execution is recovered by another."""

from __future__ import annotations

import math
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from cronwire.v1 import execution_pb2
from tests.support import wait_for
from tests.system.helpers import (
    ACTIVE,
    RUNNING,
    Execution,
    Replicas,
    describe,
    execution_in,
    state_name,
    utc,
    worker_pid,
)

SCHEDULES = 50
WINDOW_TICKS = 10
# Time to create the schedules before their first tick.
LEAD = timedelta(seconds=5)
ENDED_TICK_STATES = {execution_pb2.EXECUTION_STATE_SUCCEEDED, execution_pb2.EXECUTION_STATE_SKIPPED}


@pytest.mark.postgres
def test_three_replicas_record_every_tick_of_every_schedule_once(
    fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    url = fresh_database_url("postgres")
    servers = [replicas.start(url) for _ in range(3)]
    writer, reader = replicas.api(servers[0]), replicas.api(servers[1])
    job = writer.create_job("tick", "noop")

    # Every schedule fires each second of the same window, so the expected ticks are known.
    start = datetime.fromtimestamp(math.ceil(time.time()), UTC) + LEAD
    end = start + timedelta(seconds=WINDOW_TICKS - 0.5)
    names = [
        writer.create_schedule(
            f"every-second-{n:02d}",
            job.name,
            trigger={"cron": {"expression": "* * * * * *"}},
            startTime=start.isoformat(),
            endTime=end.isoformat(),
        ).name
        for n in range(SCHEDULES)
    ]
    assert datetime.now(UTC) < start, "creating the schedules took longer than the lead time"
    expected = [start + timedelta(seconds=k) for k in range(WINDOW_TICKS)]

    def all_dispatched_and_ended() -> list[Execution] | None:
        # A schedule past its end has no next fire time: its last tick was dispatched.
        if datetime.now(UTC) < end or any(s.HasField("next_fire_time") for s in reader.schedules_of()):
            return None
        found = reader.executions_of()
        return None if any(e.state in ACTIVE for e in found) else found

    wait = (end - datetime.now(UTC)).total_seconds() + 30
    executions = wait_for(all_dispatched_and_ended, wait, "every tick dispatched and ended", interval=0.5)

    states = Counter(state_name(e.state) for e in executions)
    assert {e.state for e in executions} <= ENDED_TICK_STATES, states
    by_schedule: dict[str, list[datetime]] = defaultdict(list)
    for execution in executions:
        assert execution.trigger == execution_pb2.EXECUTION_TRIGGER_SCHEDULE, execution
        by_schedule[execution.schedule].append(utc(execution.scheduled_time))
    assert sorted(by_schedule) == sorted(names)
    for name, ticks in by_schedule.items():
        duplicates = sorted(t for t, n in Counter(ticks).items() if n > 1)
        missing = sorted(set(expected) - set(ticks))
        assert sorted(ticks) == expected, f"{name}: duplicate ticks {duplicates}, missing ticks {missing}"

    ran = [e for e in executions if e.state == execution_pb2.EXECUTION_STATE_SUCCEEDED]
    assert ran, states
    pids = Counter(worker_pid(e.worker) for e in ran)
    assert set(pids) <= {s.process.pid for s in servers}, pids
    assert len(pids) > 1, f"all {len(ran)} executions ran on one replica: {pids}"

    for server in servers:
        assert server.stop(signal.SIGTERM) == 0, server.log()


LEASE = 3.0
# Beyond the lease: the recovery loop's period (lease / 2 at most), the retry backoff, a claim.
RECOVERY_MARGIN = 5.0


@pytest.mark.postgres
def test_a_killed_replicas_execution_is_lost_then_retried_on_the_other(
    fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    url = fresh_database_url("postgres")
    servers = [replicas.start(url, "--lease-seconds", f"{LEASE:g}") for _ in range(2)]
    apis = {server.process.pid: replicas.api(server) for server in servers}
    api = apis[servers[0].process.pid]
    job = api.create_job(
        "sleeper",
        "shell",
        parameters={"argv": ["sleep", "30"]},
        retryPolicy={"maxAttempts": 2, "initialBackoff": "0.2s", "maxBackoff": "0.2s"},
    )
    first = api.run_job(job.name)

    running = wait_for(execution_in(api, first.name, RUNNING), 15, "the first attempt to run")
    victim = next(s for s in servers if s.process.pid == worker_pid(running.worker))
    survivor = next(s for s in servers if s is not victim)
    replicas.adopt_job_processes(victim)

    assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
    api = apis[survivor.process.pid]

    lost = wait_for(
        execution_in(api, first.name, execution_pb2.EXECUTION_STATE_LOST),
        LEASE + RECOVERY_MARGIN,
        "the first attempt to be marked LOST",
    )
    assert lost.worker == running.worker
    assert "lease expired" in lost.error, lost.error

    def second_attempt_running() -> Execution | None:
        retries = [e for e in api.executions_of(job=job.name) if e.name != first.name]
        assert len(retries) <= 1, describe(retries)
        return retries[0] if retries and retries[0].state == RUNNING else None

    second = wait_for(second_attempt_running, LEASE + RECOVERY_MARGIN, "the second attempt to run")
    assert second.trigger == execution_pb2.EXECUTION_TRIGGER_RETRY
    assert second.attempt == 2
    assert second.first_attempt == first.name
    assert second.parent_execution == first.name
    assert worker_pid(second.worker) == survivor.process.pid, second.worker

    api.cancel(second.name, reason="test over")
    wait_for(
        execution_in(api, second.name, execution_pb2.EXECUTION_STATE_CANCELLED),
        10,
        "the second attempt to be cancelled",
    )
    everything = api.executions_of(job=job.name)
    assert sorted(e.attempt for e in everything) == [1, 2], describe(everything)
    assert survivor.stop(signal.SIGTERM) == 0, survivor.log()
