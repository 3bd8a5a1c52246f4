"""SIGTERM drains a replica: running executions finish within the grace period, or go back to
the queue after it."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from datetime import datetime

import pytest

from cronwire.v1 import execution_pb2
from tests.support import wait_for
from tests.system.helpers import QUEUED, RUNNING, Replicas, alive, describe, utc


@pytest.mark.postgres
def test_sigterm_lets_a_running_execution_finish_within_the_grace(
    fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    url = fresh_database_url("postgres")
    server = replicas.start(url, "--shutdown-grace", "10")
    api = replicas.api(server)
    job = api.create_job("short", "shell", parameters={"argv": ["sleep", "2"]})
    execution = api.run_job(job.name)
    wait_for(lambda: api.get(execution.name).state == RUNNING, 10, "the execution to run")

    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=20) == 0, server.log()
    exited = datetime.now().astimezone()

    # A replica that serves the API only reads the outcome without running anything.
    api = replicas.api(replicas.start(url, "--roles", "api"))
    ended = api.get(execution.name)
    assert ended.state == execution_pb2.EXECUTION_STATE_SUCCEEDED, describe([ended])
    assert ended.exit_code == 0
    assert (utc(ended.end_time) - utc(ended.start_time)).total_seconds() >= 1.9
    assert utc(ended.end_time) <= exited, "the process exited before the execution ended"
    assert [e.name for e in api.executions_of(job=job.name)] == [execution.name], "re-queued or retried"


@pytest.mark.postgres
def test_sigterm_past_the_grace_stops_the_execution_and_queues_it_again(
    fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    url = fresh_database_url("postgres")
    server = replicas.start(url, "--shutdown-grace", "1")
    api = replicas.api(server)
    job = api.create_job("long", "shell", parameters={"argv": ["sleep", "30"]})
    execution = api.run_job(job.name)
    wait_for(lambda: api.get(execution.name).state == RUNNING, 10, "the execution to run")
    job_processes = replicas.adopt_job_processes(server)

    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=20) == 0, server.log()
    assert time.monotonic() - signalled < 8, "the replica did not stop within a few seconds"
    assert not any(alive(pid) for pid in job_processes), "the job's process outlived the replica"

    api = replicas.api(replicas.start(url, "--roles", "api"))
    released = api.get(execution.name)
    assert released.state == QUEUED, describe([released])
    assert released.worker == ""
    assert not released.HasField("start_time")
    assert not released.HasField("end_time")
    assert [e.name for e in api.executions_of(job=job.name)] == [execution.name]
