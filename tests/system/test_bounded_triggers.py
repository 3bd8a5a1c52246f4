"""Trigger arithmetic never holds a replica's event loop: while costly previews arrive at the
replica running a job, its health and other RPCs answer promptly, the job's lease holds and the
job's code runs once."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cronwire.v1 import execution_pb2, schedule_pb2, schedule_service_pb2
from tests.integration.api.test_schedule_service import NESTED_TRIGGER
from tests.support import status_details, wait_for
from tests.system.helpers import (
    RUNNING,
    Replicas,
    describe,
    execution_in,
    worker_pid,
)

LEASE = 3.0
# How long the previews keep coming: longer than the lease, so a held loop would lose it.
BARRAGE = 2 * LEASE
JOB_SECONDS = 10
# A loop that answers at all answers in milliseconds; an old server's held loop took seconds.
PROMPT = 1.5


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory any user can write: the job may run as an unprivileged user."""
    path = Path(tempfile.mkdtemp(prefix="cronwire-bounded-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def preview_request(trigger: dict[str, Any], count: int) -> schedule_service_pb2.PreviewScheduleRequest:
    schedule = json_format.ParseDict(
        {"job": "namespaces/core/jobs/recorder", "trigger": trigger, "startTime": "2030-01-01T00:00:00Z"},
        schedule_pb2.Schedule(),
    )
    return schedule_service_pb2.PreviewScheduleRequest(schedule=schedule, count=count)


# Valid, and each fire time within the search budget (every 4001 s and every 4003 s meet once
# in 185 days, after some 8,000 rounds), but a thousand of them cost far more than the preview
# timeout: computed on the event loop, this held it for about a minute.
COSTLY_BUT_VALID = {
    "allOf": {"triggers": [{"interval": {"every": "4001s"}}, {"interval": {"every": "4003s"}}]}
}


@pytest.mark.postgres
def test_costly_previews_leave_health_other_rpcs_and_the_lease_alone(
    fresh_database_url: Callable[[str], str], replicas: Replicas, shared_dir: Path
) -> None:
    url = fresh_database_url("postgres")
    servers = [replicas.start(url, "--lease-seconds", f"{LEASE:g}") for _ in range(2)]
    apis = {server.process.pid: replicas.api(server) for server in servers}
    runs = shared_dir / "runs"
    script = f'echo "attempt $CRONWIRE_ATTEMPT" >> {runs}; /bin/sleep {JOB_SECONDS}'
    api = apis[servers[0].process.pid]
    job = api.create_job(
        "recorder",
        "shell",
        parameters={"argv": ["/bin/sh", "-c", script]},
        timeout=f"{JOB_SECONDS * 3}s",
        retryPolicy={"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "0.1s"},
    )
    first = api.run_job(job.name)
    running = wait_for(execution_in(api, first.name, RUNNING), 15, "the job to run")
    busy = next(s for s in servers if s.process.pid == worker_pid(running.worker))
    replicas.adopt_job_processes(busy)
    wait_for(lambda: runs.exists() and runs.read_text(), 10, "the job's code to start")

    # Everything below goes to the replica running the job.
    target = apis[busy.process.pid]
    health = health_pb2_grpc.HealthStub(target.channel)
    outcomes: dict[str, list[tuple[str, float]]] = {"nested": [], "costly": []}
    stop = threading.Event()

    def send(kind: str, request: schedule_service_pb2.PreviewScheduleRequest) -> None:
        started = time.monotonic()
        try:
            target.schedules.PreviewSchedule(request, timeout=30)
            outcome = "OK"
        except grpc.RpcError as error:
            _, reason = status_details(error)
            outcome = f"{error.code().name} {reason}"  # type: ignore[attr-defined]
        outcomes[kind].append((outcome, time.monotonic() - started))

    def nested_barrage() -> None:
        while not stop.is_set():
            send("nested", preview_request(NESTED_TRIGGER, 10))

    senders = [
        threading.Thread(target=nested_barrage),
        threading.Thread(target=send, args=("costly", preview_request(COSTLY_BUT_VALID, 1000))),
    ]
    for sender in senders:
        sender.start()
    slowest = {"health": 0.0, "GetExecution": 0.0}
    checks = 0
    try:
        until = time.monotonic() + BARRAGE
        while time.monotonic() < until:
            started = time.monotonic()
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            slowest["health"] = max(slowest["health"], time.monotonic() - started)
            started = time.monotonic()
            current = target.get(first.name)
            slowest["GetExecution"] = max(slowest["GetExecution"], time.monotonic() - started)
            assert (current.state, current.attempt) == (RUNNING, 1), describe([current])
            checks += 1
            time.sleep(0.1)
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=60)

    print(f"checks {checks}, slowest {slowest}, previews {outcomes}")  # shown when the test fails
    assert checks >= BARRAGE / (PROMPT + 0.1)
    assert max(slowest.values()) < PROMPT, slowest
    # The nested preview is refused by its search budget, fast, every time.
    assert outcomes["nested"], outcomes
    assert {outcome for outcome, _ in outcomes["nested"]} == {"INVALID_ARGUMENT TRIGGER_TOO_EXPENSIVE"}
    assert max(seconds for _, seconds in outcomes["nested"]) < PROMPT, outcomes["nested"]
    # The costly one ran in a thread until the preview timeout, then gave up.
    [(outcome, seconds)] = outcomes["costly"]
    assert outcome == "DEADLINE_EXCEEDED PREVIEW_TOO_EXPENSIVE"
    assert seconds < 10

    ended = wait_for(
        execution_in(target, first.name, execution_pb2.EXECUTION_STATE_SUCCEEDED),
        JOB_SECONDS + 15,
        "the job to succeed",
    )
    assert ended.attempt == 1
    everything = target.executions_of(job=job.name)
    assert [e.name for e in everything] == [first.name], describe(everything)
    assert runs.read_text() == "attempt 1\n"
