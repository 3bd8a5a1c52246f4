"""A cron schedule fires on time and its execution's captured output is kept."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from cronwire.v1 import execution_pb2
from tests.support import wait_for
from tests.system.helpers import Execution, Replicas, describe, utc, worker_pid

SUCCEEDED = execution_pb2.EXECUTION_STATE_SUCCEEDED


@pytest.mark.postgres
def test_a_cron_tick_runs_a_shell_job_and_keeps_its_output(
    fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    server = replicas.start(fresh_database_url("postgres"))
    api = replicas.api(server)
    job = api.create_job(
        "hello", "shell", parameters={"command": "echo hello-$CRONWIRE_ATTEMPT", "shell": True}
    )
    schedule = api.create_schedule(
        "hello-every-second", job.name, trigger={"cron": {"expression": "* * * * * *"}}
    )

    def first_success() -> Execution | None:
        return next((e for e in api.executions_of(schedule=schedule.name) if e.state == SUCCEEDED), None)

    listed = wait_for(first_success, 10, "a tick to run", interval=0.1)
    api.pause(schedule.name)
    execution = api.get(listed.name)
    assert execution.output == "hello-1\n", describe([execution])
    assert not execution.output_truncated
    assert execution.HasField("exit_code")
    assert execution.exit_code == 0
    assert execution.trigger == execution_pb2.EXECUTION_TRIGGER_SCHEDULE
    assert execution.schedule == schedule.name
    assert execution.job == job.name
    assert execution.attempt == 1
    assert not execution.first_attempt
    assert worker_pid(execution.worker) == server.process.pid, execution.worker
    assert utc(execution.scheduled_time).microsecond == 0, "a cron tick falls on a whole second"
    assert utc(execution.start_time) >= utc(execution.scheduled_time)
    assert utc(execution.end_time) >= utc(execution.start_time)
    # The listing leaves the output out; GetExecution has it.
    assert listed.output == ""
    assert server.stop(signal.SIGTERM) == 0, server.log()
