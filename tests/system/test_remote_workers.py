"""Remote workers end to end: `cronwire-server` processes, `cronwire worker run` processes (and
raw WorkerService streams where a test must misbehave like no SDK does), on SQLite and
PostgreSQL."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from cronwire.v1 import cluster_service_pb2, execution_pb2, execution_service_pb2, job_service_pb2, worker_pb2
from cronwire.v1.cluster_service_pb2_grpc import ClusterServiceStub
from tests.support import status_details, wait_for
from tests.system.helpers import QUEUED, RUNNING, Api, Replicas, describe, execution_in
from tests.system.remote_helpers import RawWorker, WorkerProcesses

SUCCEEDED = execution_pb2.EXECUTION_STATE_SUCCEEDED
FAILED = execution_pb2.EXECUTION_STATE_FAILED
CANCELLED = execution_pb2.EXECUTION_STATE_CANCELLED
LOST = execution_pb2.EXECUTION_STATE_LOST
TIMED_OUT = execution_pb2.EXECUTION_STATE_TIMED_OUT
LEASE_SECONDS = "2"


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerProcesses]:
    started = WorkerProcesses(tmp_path / "workers")
    yield started
    started.close()


class ClusterApi(Api):
    """`Api` with the cluster service too."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.cluster = ClusterServiceStub(self.channel)


def live_output(api: Api, execution: str) -> str:
    request = execution_service_pb2.StreamExecutionLogsRequest(name=execution)
    return "".join(c.data for c in api.executions.StreamExecutionLogs(request, timeout=10))


def result_of(execution: execution_pb2.Execution) -> object:
    return json_format.MessageToDict(execution.result)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_scheduled_remote_job_runs_on_a_worker_with_its_output(
    backend: str,
    fresh_database_url: Callable[[str], str],
    replicas: Replicas,
    workers: WorkerProcesses,
) -> None:
    server = replicas.start(fresh_database_url(backend))
    api = replicas.api(server)
    job = api.create_job("greet", "remote", parameters={"queue": "billing", "task": "echo"})
    workers.start(server.target, queues="billing", identity="worker-a")
    api.create_schedule(
        "every-second", job.name, trigger={"interval": {"every": "1s"}}, arguments={"word": "hello"}
    )

    def succeeded() -> execution_pb2.Execution | None:
        done = [e for e in api.executions_of(job=job.name) if e.state == SUCCEEDED]
        return done[0] if done else None

    execution = wait_for(succeeded, 30, "a scheduled remote execution to succeed")
    full = api.get(execution.name)
    assert "echo says hello" in full.output, describe([full])
    assert result_of(full) == {"arguments": {"word": "hello"}, "worker": "worker-a"}
    assert full.worker.startswith("worker-a session:"), full.worker
    # The output is the run's log too (StreamExecutionLogs).
    request = execution_service_pb2.StreamExecutionLogsRequest(name=execution.name)
    logs = "".join(c.data for c in api.executions.StreamExecutionLogs(request, timeout=10))
    assert "echo says hello" in logs


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_local_pool_never_runs_remote_work_and_queues_route(
    backend: str,
    fresh_database_url: Callable[[str], str],
    replicas: Replicas,
    workers: WorkerProcesses,
) -> None:
    server = replicas.start(fresh_database_url(backend))
    api = ClusterApi(server.target)
    billing = api.create_job("billing", "remote", parameters={"queue": "billing", "task": "echo"})
    reports = api.create_job("reports", "remote", parameters={"queue": "reports", "task": "echo"})
    local = api.create_job("local", "noop")
    waiting = api.run_job(billing.name)
    # A local run queued after it starts and ends while the remote one stays QUEUED: no local
    # worker takes remote work, and none of the fused dispatch either.
    ran = api.run_job(local.name)
    wait_for(execution_in(api, ran.name, SUCCEEDED), 20, "the local run")
    assert api.get(waiting.name).state == QUEUED

    workers.start(server.target, queues="billing", identity="billing-worker")
    workers.start(server.target, queues="reports", identity="reports-worker")

    # The cluster status lists them, per queue, with their free slots.
    def connected() -> dict[str, tuple[list[str], int]] | None:
        status = api.cluster.GetClusterStatus(cluster_service_pb2.GetClusterStatusRequest(), timeout=10)
        # Free slots and runs together are the worker's concurrency (2); the run waiting on
        # billing may have been taken already.
        found = {w.identity: (list(w.queues), w.free_slots + w.running) for w in status.workers}
        expected = {"billing-worker": (["billing"], 2), "reports-worker": (["reports"], 2)}
        return found if found == expected else None

    wait_for(connected, 30, "both workers in the cluster status, with their queues and slots")
    shown = subprocess.run(
        [str(Path(sys.executable).parent / "cronwire"), "status", "--server", server.target],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "remote workers: 2 connected" in shown.stdout, shown.stdout + shown.stderr
    assert re.search(r"billing\s+billing-worker\s+[0-2]\s+[0-2]", shown.stdout), shown.stdout
    assert re.search(r"reports\s+reports-worker\s+2\s+0", shown.stdout), shown.stdout
    for job, identity in ((billing, "billing-worker"), (reports, "reports-worker")):
        runs = [api.run_job(job.name) for _ in range(3)]
        for run in runs:
            done = wait_for(execution_in(api, run.name, SUCCEEDED), 30, f"a {job.name} run")
            assert done.worker.startswith(f"{identity} session:"), describe([done])
    done = wait_for(execution_in(api, waiting.name, SUCCEEDED), 30, "the run that waited")
    assert done.worker.startswith("billing-worker session:")
    api.close()


@pytest.mark.postgres
def test_a_killed_worker_s_run_is_lost_and_retried_on_another_worker(
    fresh_database_url: Callable[[str], str], replicas: Replicas, workers: WorkerProcesses
) -> None:
    server = replicas.start(fresh_database_url("postgres"), "--lease-seconds", LEASE_SECONDS)
    api = replicas.api(server)
    job = api.create_job(
        "fragile",
        "remote",
        parameters={"queue": "q", "task": "block-first"},
        retryPolicy={"maxAttempts": 3, "initialBackoff": "0.1s"},
    )
    first = workers.start(server.target, queues="q", identity="doomed")
    execution = api.run_job(job.name)
    wait_for(lambda: workers.marker("run-started-1"), 30, "the first attempt to start on the worker")
    workers.start(server.target, queues="q", identity="survivor")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)

    lost = wait_for(execution_in(api, execution.name, LOST), 30, "the attempt to be LOST")
    assert "doomed" in lost.error, describe([lost])

    def retried() -> execution_pb2.Execution | None:
        found = [e for e in api.executions_of(job=job.name) if e.attempt == 2]
        return found[0] if found and found[0].state == SUCCEEDED else None

    second = wait_for(retried, 30, "the retry to succeed on the other worker")
    assert second.worker.startswith("survivor session:"), describe([second])
    assert result_of(second) == {"attempt": 2, "worker": "survivor"}


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_result_for_a_lease_no_longer_held_is_refused_and_not_recorded(
    backend: str, fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    server = replicas.start(fresh_database_url(backend), "--lease-seconds", LEASE_SECONDS)
    api = replicas.api(server)
    job = api.create_job("slow", "remote", parameters={"queue": "q"}, retryPolicy={"maxAttempts": 2})
    execution = api.run_job(job.name)
    stale = RawWorker(server.target)
    other = RawWorker(server.target)
    try:
        stale.hello(["q"], identity="stale")
        stale.next("welcome")
        assignment = stale.next("assignment").assignment
        assert assignment.execution == execution.name
        assert assignment.attempt == 1
        assert assignment.lease_token

        # Another worker cannot heartbeat, send output for, or finish the lease it does not hold.
        other.hello(["q"], identity="stale", free_slots=0)
        other.next("welcome")
        lease = worker_pb2.HeldLease(execution=assignment.execution, lease_token="not-the-token")
        other.send(heartbeat=worker_pb2.WorkerHeartbeat(leases=[lease]))
        refused = other.next("refused").refused
        assert refused.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert refused.reason == "LEASE_NOT_HELD"
        other.send(
            result=worker_pb2.TaskResult(
                execution=assignment.execution,
                lease_token=assignment.lease_token,
                success=worker_pb2.TaskSuccess(result=struct_pb2.Value(string_value="forged")),
            )
        )
        assert other.next("refused").refused.reason == "LEASE_NOT_HELD"
        assert api.get(execution.name).state == RUNNING

        # The stale worker stays connected but stops renewing the lease (heartbeats listing none,
        # as a worker frozen mid-task would, or one whose renewals are lost): the lease expires,
        # the attempt is LOST and retried.
        def lost() -> execution_pb2.Execution | None:
            for stream in (stale, other):
                stream.send(heartbeat=worker_pb2.WorkerHeartbeat())
            return execution_in(api, execution.name, LOST)()

        wait_for(lost, 30, "the unrenewed attempt to be LOST", interval=0.2)
        stale.send(
            result=worker_pb2.TaskResult(
                execution=assignment.execution,
                lease_token=assignment.lease_token,
                success=worker_pb2.TaskSuccess(result=struct_pb2.Value(string_value="late")),
            )
        )
    finally:
        other.close()
    try:
        late = stale.next("refused").refused
        assert late.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert late.lease_token == assignment.lease_token
    finally:
        stale.close()
    recovered = api.get(execution.name)
    assert recovered.state == LOST, describe([recovered])
    assert not recovered.HasField("result"), describe([recovered])
    (retry,) = [e for e in api.executions_of(job=job.name) if e.attempt == 2]
    # Queued: neither worker connected has a free slot left.
    assert retry.state == QUEUED, describe([retry])


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_cancel_reaches_a_running_remote_task(
    backend: str, fresh_database_url: Callable[[str], str], replicas: Replicas, workers: WorkerProcesses
) -> None:
    server = replicas.start(fresh_database_url(backend))
    api = replicas.api(server)
    job = api.create_job("waits", "remote", parameters={"queue": "q", "task": "wait-cancel"})
    workers.start(server.target, queues="q", identity="w")
    execution = api.run_job(job.name)
    wait_for(lambda: workers.marker("run-started"), 30, "the task to start")
    api.cancel(execution.name, reason="not today")
    wait_for(lambda: workers.marker("run-cancelled"), 15, "the task to see the cancel")
    cancelled = wait_for(execution_in(api, execution.name, CANCELLED), 15, "the run to be CANCELLED")
    assert "not today" in cancelled.error, describe([cancelled])


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_failures_timeouts_and_retries_behave_as_for_any_kind(
    backend: str, fresh_database_url: Callable[[str], str], replicas: Replicas, workers: WorkerProcesses
) -> None:
    server = replicas.start(fresh_database_url(backend))
    api = replicas.api(server)
    retry = {"maxAttempts": 2, "initialBackoff": "0.1s"}
    flaky = api.create_job("flaky", "remote", parameters={"queue": "q", "task": "fail"}, retryPolicy=retry)
    final = api.create_job("final", "remote", parameters={"queue": "q", "task": "fail"}, retryPolicy=retry)
    slow = api.create_job("slow", "remote", parameters={"queue": "q", "task": "wait-cancel"}, timeout="1s")
    workers.start(server.target, queues="q", identity="w", concurrency=4)
    api.run_job(flaky.name)
    arguments = struct_pb2.Struct()
    arguments.update({"retryable": False})
    api.jobs.RunJob(job_service_pb2.RunJobRequest(name=final.name, arguments=arguments), timeout=10)
    timed = api.run_job(slow.name)

    def attempts(job: str, count: int) -> list[execution_pb2.Execution] | None:
        found = api.executions_of(job=job)
        return found if len(found) == count and all(e.state == FAILED for e in found) else None

    failed = wait_for(lambda: attempts(flaky.name, 2), 30, "both attempts of the flaky job to fail")
    assert all("ValueError: bad input" in e.error for e in failed), describe(failed)
    once = wait_for(lambda: attempts(final.name, 1), 30, "the non-retryable failure")
    assert "NonRetryableError" in once[0].error, describe(once)
    wait_for(execution_in(api, timed.name, TIMED_OUT), 30, "the slow run to time out")
    wait_for(lambda: workers.marker("run-cancelled"), 15, "the timed-out task to be told to stop")


@pytest.mark.postgres
def test_a_worker_whose_replica_is_killed_reconnects_and_nothing_is_lost_or_run_twice(
    fresh_database_url: Callable[[str], str], replicas: Replicas, workers: WorkerProcesses
) -> None:
    url = fresh_database_url("postgres")
    doomed = replicas.start(url, "--lease-seconds", "6")
    survivor = replicas.start(url, "--lease-seconds", "6")
    api = replicas.api(survivor)
    job = api.create_job(
        "gated", "remote", parameters={"queue": "q", "task": "gate"}, retryPolicy={"maxAttempts": 3}
    )
    # The worker knows both replicas and connects to the first.
    workers.start(f"{doomed.target},{survivor.target}", queues="q", identity="w")
    execution = api.run_job(job.name)
    wait_for(lambda: workers.marker("run-started-1"), 30, "the task to start")
    wait_for(lambda: "at the gate" in live_output(api, execution.name), 30, "its first output to be stored")
    doomed.process.send_signal(signal.SIGKILL)
    doomed.process.wait(timeout=10)
    wait_for(lambda: "connected to " + survivor.target in workers.log("w"), 30, "the worker to reconnect")
    (workers.markers / "run-go").write_text("")

    done = wait_for(execution_in(api, execution.name, SUCCEEDED), 30, "the run to finish after the reconnect")
    assert result_of(done) == {"attempt": 1, "worker": "w"}, describe([done])
    # Its output goes on where the first stream left it.
    output = live_output(api, execution.name)
    assert output.index("at the gate on attempt 1") < output.index("through the gate on attempt 1"), output
    runs = api.executions_of(job=job.name)
    assert len(runs) == 1, describe(runs)  # no LOST attempt, no retry
    assert workers.marker("run-started-2") is None


@pytest.mark.postgres
def test_a_frozen_worker_s_late_result_is_refused_and_the_outcome_recorded_once(
    fresh_database_url: Callable[[str], str], replicas: Replicas, workers: WorkerProcesses
) -> None:
    server = replicas.start(fresh_database_url("postgres"), "--lease-seconds", LEASE_SECONDS)
    api = replicas.api(server)
    job = api.create_job(
        "gated",
        "remote",
        parameters={"queue": "q", "task": "gate"},
        retryPolicy={"maxAttempts": 3, "initialBackoff": "0.1s"},
    )
    frozen = workers.start(server.target, queues="q", identity="frozen", concurrency=1)
    execution = api.run_job(job.name)
    wait_for(lambda: workers.marker("run-started-1"), 30, "the first attempt to start")
    frozen.send_signal(signal.SIGSTOP)
    try:
        wait_for(execution_in(api, execution.name, LOST), 30, "the frozen worker's attempt to be LOST")
        # Its run's lease may expire before the server's check finds its stream silent for a
        # lease: it stays frozen until the server has closed that stream too.
        wait_for(
            lambda: "remote worker frozen disconnected" in server.log(),
            30,
            "the server to close the frozen worker's silent stream",
        )
        workers.start(server.target, queues="q", identity="thawed-elsewhere", concurrency=1)
        wait_for(lambda: workers.marker("run-started-2"), 30, "the retry to start on the other worker")
        # Both attempts may now end: the frozen one's result comes late.
        (workers.markers / "run-go").write_text("")
    finally:
        frozen.send_signal(signal.SIGCONT)

    def retried() -> execution_pb2.Execution | None:
        found = [e for e in api.executions_of(job=job.name) if e.attempt == 2 and e.state == SUCCEEDED]
        return found[0] if found else None

    second = wait_for(retried, 30, "the retry to succeed")
    assert result_of(second) == {"attempt": 2, "worker": "thawed-elsewhere"}
    # Thawed, the frozen worker finds its stream closed (silent for a lease) and reconnects; its
    # late result is refused on the new stream (or was lost with the old one, unacknowledged).
    wait_for(lambda: workers.log("frozen").count("connected to") >= 2, 30, "the frozen worker to reconnect")
    first = api.get(execution.name)
    assert first.state == LOST, describe([first])
    assert not first.HasField("result"), describe([first])
    assert "through the gate" not in first.output
    assert len(api.executions_of(job=job.name)) == 2


def test_bad_worker_messages_are_refused_naming_the_field(
    fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    server = replicas.start(fresh_database_url("sqlite"))
    cases: list[tuple[dict[str, object], str]] = [
        ({"slots": worker_pb2.WorkerSlots(free_slots=1)}, "hello"),
        (
            {"hello": worker_pb2.WorkerHello(identity="w", queues=["no spaces"], free_slots=1)},
            "hello.queues[0]",
        ),
        ({"hello": worker_pb2.WorkerHello(identity="w", queues=[], free_slots=1)}, "hello.queues"),
        ({"hello": worker_pb2.WorkerHello(identity="", queues=["q"], free_slots=1)}, "hello.identity"),
        ({"hello": worker_pb2.WorkerHello(identity="w", queues=["q"], free_slots=5000)}, "hello.free_slots"),
    ]
    for message, field in cases:
        stream = RawWorker(server.target)
        try:
            stream.send(**message)
            error = stream.error()
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, error)
            violations, _ = status_details(error)
            assert field in violations, (field, violations)
        finally:
            stream.close()
    # After the hello, a malformed message ends the stream naming its field too.
    stream = RawWorker(server.target)
    try:
        stream.hello(["q"])
        stream.next("welcome")
        stream.send(output=worker_pb2.OutputChunk(execution="", lease_token="t", text="x"))
        error = stream.error()
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "output.execution" in status_details(error)[0]
    finally:
        stream.close()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_nul_in_what_a_remote_task_produced_is_stored_and_ends_neither_run_nor_stream(
    backend: str, fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    server = replicas.start(fresh_database_url(backend))
    api = replicas.api(server)
    job = api.create_job("binary", "remote", parameters={"queue": "q"})
    first, second = api.run_job(job.name), api.run_job(job.name)
    stream = RawWorker(server.target)
    try:
        stream.hello(["q"], free_slots=2)
        stream.next("welcome")
        assignments = [stream.next("assignment").assignment for _ in range(2)]
        # Job output holding a NUL, a result and a failure holding NULs and a NaN: none is refused
        # (that would end the stream and both runs); each is stored as a local run's would be.
        done, failed = assignments
        stream.send(
            output=worker_pb2.OutputChunk(execution=done.execution, lease_token=done.lease_token, text="a\0b")
        )
        result = struct_pb2.Value()
        result.struct_value.update({"k\0": ["v\0", float("nan")]})
        stream.send(
            result=worker_pb2.TaskResult(
                execution=done.execution,
                lease_token=done.lease_token,
                success=worker_pb2.TaskSuccess(result=result),
            )
        )
        stream.send(
            result=worker_pb2.TaskResult(
                execution=failed.execution,
                lease_token=failed.lease_token,
                failure=worker_pb2.TaskFailure(type="Oops\0", message="m\0", retryable=False),
            )
        )
        succeeded = wait_for(
            execution_in(api, done.execution, SUCCEEDED), 30, "the run with a NUL to succeed"
        )
        assert succeeded.output == "a\ufffdb"
        assert result_of(succeeded) == {"k\ufffd": ["v\ufffd", None]}
        ended = wait_for(
            execution_in(api, failed.execution, FAILED), 30, "the failing run with a NUL to fail"
        )
        assert ended.error == "Oops\ufffd: m\ufffd"
        assert {a.execution for a in assignments} == {first.name, second.name}
        # The stream is still the worker's: the next run is handed to it.
        third = api.run_job(job.name)
        stream.send(slots=worker_pb2.WorkerSlots(free_slots=1))
        assert stream.next("assignment").assignment.execution == third.name
    finally:
        stream.close()
