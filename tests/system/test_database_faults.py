"""Database faults under load, against real replicas on a PostgreSQL server of the test's own: the
server restarted, and every replica connection terminated. Every run a caller was told about runs,
exactly once (counted by the job's own side effect, a line in a file), health is NOT_SERVING while the
database is away and SERVING again only when every loop runs, and callers get UNAVAILABLE meanwhile.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cronwire.v1 import execution_pb2
from tests.support import ServerProcess, status_details, wait_for
from tests.system.helpers import Api, Replicas, describe
from tests.throwaway_postgres import ThrowawayPostgres

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SUCCEEDED = execution_pb2.EXECUTION_STATE_SUCCEEDED


@pytest.fixture
def own_replicas(throwaway_postgres: ThrowawayPostgres, tmp_path: Path) -> Iterator[Replicas]:
    """Replicas on the throwaway server, gone before it is."""
    started = Replicas(tmp_path / "replicas")
    yield started
    started.close()
    print(f"--- postgres log:\n{throwaway_postgres.log()[-4000:]}")


def _health(server: ServerProcess) -> int | None:
    with grpc.insecure_channel(server.target) as channel:
        try:
            return int(
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status
            )
        except grpc.RpcError:
            return None


def _failure(error: grpc.RpcError) -> str:
    """code/reason of a failed call, with "+retry" when it carries RetryInfo."""
    _, reason = status_details(error)
    metadata = error.trailing_metadata() or ()  # type: ignore[attr-defined]
    raw = next((value for key, value in metadata if key == "grpc-status-details-bin"), b"")
    details = status_pb2.Status.FromString(raw).details
    retry = any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in details)
    return f"{error.code().name}/{reason}{'+retry' if retry else ''}"


class Load:
    """RunJob on every replica, back to back, from a thread each; remembers what was acknowledged
    and which codes the failures had."""

    def __init__(self, apis: list[Api], job: str) -> None:
        self._apis = apis
        self._job = job
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.acknowledged: list[str] = []
        self.failures: Counter[str] = Counter()
        self._threads = [threading.Thread(target=self._run, args=(api,), daemon=True) for api in apis]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, api: Api) -> None:
        while not self._stop.is_set():
            try:
                name = api.run_job(self._job).name
            except grpc.RpcError as error:
                with self._lock:
                    self.failures[_failure(error)] += 1
                self._stop.wait(0.05)  # a retrying client backs off
                continue
            with self._lock:
                self.acknowledged.append(name)

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)


def _fault(postgres: ThrowawayPostgres, database: str, kind: str, replicas: list[ServerProcess]) -> None:
    if kind == "restart":
        postgres.stop("fast")
        for server in replicas:
            wait_for(lambda s=server: _health(s) == NOT_SERVING, 20, "NOT_SERVING while the database is down")
        postgres.start()
    else:
        # Every session of the replicas ends at once, as a failover or an idle-session killer would.
        assert postgres.terminate_sessions(database) > 0


@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["restart", "terminate"])
def test_every_acknowledged_run_runs_exactly_once_after_a_database_fault(
    kind: str, throwaway_postgres: ThrowawayPostgres, own_replicas: Replicas, tmp_path: Path
) -> None:
    url = throwaway_postgres.create_database("cronwire")
    replicas = [own_replicas.start(url), own_replicas.start(url)]
    apis = [own_replicas.api(server) for server in replicas]
    ledger = tmp_path / "ledger"
    job = (
        apis[0]
        .create_job(
            "record", "shell", parameters={"argv": ["sh", "-c", f'echo "$CRONWIRE_EXECUTION" >> {ledger}']}
        )
        .name
    )

    with Load(apis, job) as load:
        wait_for(lambda: load.count() >= 50, 30, "runs acknowledged before the fault")
        _fault(throwaway_postgres, "cronwire", kind, replicas)
        if kind == "terminate":
            # Again once the replicas have reconnected: a second blip must not find loops dead.
            before = load.count()
            wait_for(lambda: load.count() >= before + 50, 30, "runs acknowledged after the first blip")
            _fault(throwaway_postgres, "cronwire", kind, replicas)
        for server in replicas:
            wait_for(lambda s=server: _health(s) == SERVING, 30, "SERVING once the database is back")
        after = load.count()
        wait_for(lambda: load.count() >= after + 50, 30, "runs acknowledged after the fault")

    # Every failure a caller saw says "retry" (UNAVAILABLE with RetryInfo), none is an internal error.
    retryable = "UNAVAILABLE/STORAGE_UNAVAILABLE+retry"
    assert set(load.failures) <= {retryable}, load.failures
    if kind == "restart":
        assert load.failures[retryable] > 0, "the load went on while the database was down"

    acknowledged = set(load.acknowledged)
    assert len(acknowledged) == len(load.acknowledged)

    def all_ran() -> list[execution_pb2.Execution] | None:
        found = {e.name: e for e in apis[1].executions_of(job=job)}
        pending = [name for name in acknowledged if found.get(name) is None or found[name].state != SUCCEEDED]
        return None if pending else list(found.values())

    executions = wait_for(all_ran, 90, "every acknowledged run to succeed", interval=0.5)
    lines = Counter(ledger.read_text().split())
    twice = {name: n for name, n in lines.items() if n > 1}
    assert not twice, f"ran more than once: {twice}\n{describe(executions)}"
    assert acknowledged <= set(lines), "an acknowledged run left no side effect"

    for server in replicas:
        # SERVING again: a replica's probe may notice the last blip only after the load went on
        # (then it turns NOT_SERVING for a moment); a loop left dead would keep it NOT_SERVING.
        wait_for(lambda s=server: _health(s) == SERVING, 30, "SERVING after the last fault")
        assert server.stop(signal.SIGTERM) == 0, server.log()
    logs = "\n".join(server.log() for server in replicas)
    # Nothing broke in a way the loops did not expect: a lost database is a warning, not a bug.
    assert "Traceback" not in logs, logs[-8000:]
    if kind == "restart":
        assert "health NOT_SERVING" in logs
        assert "health SERVING" in logs
