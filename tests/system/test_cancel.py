"""CancelExecution on a running execution: its replica stops it and the reason is kept."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from cronwire.v1 import execution_pb2
from tests.support import wait_for
from tests.system.helpers import RUNNING, Replicas, describe, execution_in

CANCELLED = execution_pb2.EXECUTION_STATE_CANCELLED


@pytest.mark.postgres
def test_cancelling_a_running_execution_keeps_the_reason(
    fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    server = replicas.start(fresh_database_url("postgres"))
    api = replicas.api(server)
    job = api.create_job("long", "shell", parameters={"argv": ["sleep", "30"]})
    execution = api.run_job(job.name)
    wait_for(lambda: api.get(execution.name).state == RUNNING, 10, "the execution to run")
    replicas.adopt_job_processes(server)

    api.cancel(execution.name, reason="maintenance window")
    cancelled = wait_for(execution_in(api, execution.name, CANCELLED), 10, "the execution to stop")
    assert server.stop(signal.SIGTERM) == 0, server.log()
    # CancelExecutionRequest.reason: "Why it is cancelled, for people; recorded as its `error`."
    assert "maintenance window" in cancelled.error, describe([cancelled])
