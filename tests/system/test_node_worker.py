"""The Node.js worker of examples/node-worker (@grpc/grpc-js) against a real server: the
WorkerService contract from a second language. CI installs its packages (scripts/test)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from google.protobuf import json_format

from cronwire.v1 import execution_pb2, execution_service_pb2
from tests.conftest import in_ci
from tests.support import REPO, wait_for
from tests.system.helpers import Replicas, describe, execution_in

NODE_WORKER = REPO / "examples" / "node-worker"
SUCCEEDED = execution_pb2.EXECUTION_STATE_SUCCEEDED
CANCELLED = execution_pb2.EXECUTION_STATE_CANCELLED


@pytest.fixture
def node_worker(tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    node = shutil.which("node")
    if node is None or not (NODE_WORKER / "node_modules" / "@grpc" / "grpc-js").exists():
        if in_ci():
            raise AssertionError(
                "node and examples/node-worker/node_modules are needed (scripts/test installs them)"
            )
        pytest.skip("node or the node worker's packages are not installed (npm ci in examples/node-worker)")
    started: list[subprocess.Popen[str]] = []
    log = tmp_path / "node-worker.log"

    def start(target: str) -> subprocess.Popen[str]:
        with log.open("w") as out:
            process = subprocess.Popen(
                [node, "worker.js"],
                cwd=NODE_WORKER,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env={
                    **os.environ,
                    "CRONWIRE_SERVER": target,
                    "QUEUES": "billing",
                    "WORKER_IDENTITY": "node-1",
                },
            )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    print("--- node worker:\n" + log.read_text())


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_node_worker_runs_scheduled_jobs_and_hears_cancels(
    backend: str,
    fresh_database_url: Callable[[str], str],
    replicas: Replicas,
    node_worker: Callable[[str], subprocess.Popen[str]],
) -> None:
    server = replicas.start(fresh_database_url(backend))
    api = replicas.api(server)
    job = api.create_job("invoices", "remote", parameters={"queue": "billing", "task": "send-invoices"})
    waits = api.create_job("waits", "remote", parameters={"queue": "billing", "task": "wait"})
    worker = node_worker(server.target)
    api.create_schedule(
        "often", job.name, trigger={"interval": {"every": "1s"}}, arguments={"month": "2027-01"}
    )

    def succeeded() -> execution_pb2.Execution | None:
        done = [e for e in api.executions_of(job=job.name) if e.state == SUCCEEDED]
        return done[0] if done else None

    execution = api.get(wait_for(succeeded, 30, "a scheduled run on the node worker").name)
    result = json_format.MessageToDict(execution.result)
    assert result["month"] == "2027-01", describe([execution])
    assert result["worker"] == "node-1"
    assert result["runtime"].startswith("node v")
    assert "node sends the invoices of 2027-01" in execution.output
    assert execution.worker.startswith("node-1 session:")

    running = api.run_job(waits.name)
    wait_for(
        lambda: api.get(running.name).state == execution_pb2.EXECUTION_STATE_RUNNING, 30, "the wait task"
    )

    def live_output() -> str:
        request = execution_service_pb2.StreamExecutionLogsRequest(name=running.name)
        return "".join(c.data for c in api.executions.StreamExecutionLogs(request, timeout=10))

    # Its output so far, live (the execution's own output is written when it ends).
    wait_for(lambda: "waiting to be cancelled" in live_output(), 15, "its live output")
    api.cancel(running.name, reason="enough")
    cancelled = wait_for(execution_in(api, running.name, CANCELLED), 15, "the cancel to reach the node task")
    assert "enough" in cancelled.error

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
