"""Several replicas on one PostgreSQL database: each shows in every replica's cluster status; one
that stops cleanly leaves the registry, one that dies turns not alive."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from cronwire.v1 import cluster_pb2, cluster_service_pb2, cluster_service_pb2_grpc
from tests.support import ServerProcess, wait_for
from tests.system.helpers import Replicas

pytestmark = pytest.mark.postgres

HEARTBEAT = "0.3"


@pytest.fixture
def replicas(tmp_path: Path, fresh_database_url: Callable[[str], str]) -> Iterator[Replicas]:
    started = Replicas(tmp_path / "replicas")
    yield started
    started.close()


def _replicas_seen_by(server: ServerProcess) -> dict[int, cluster_pb2.Replica]:
    with grpc.insecure_channel(server.target) as channel:
        stub = cluster_service_pb2_grpc.ClusterServiceStub(channel)
        status = stub.GetClusterStatus(cluster_service_pb2.GetClusterStatusRequest(), timeout=15)
    return {replica.pid: replica for replica in status.replicas}


def test_replicas_register_heartbeat_and_leave(
    replicas: Replicas, fresh_database_url: Callable[[str], str]
) -> None:
    url = fresh_database_url("postgres")
    first = replicas.start(url, "--replica-heartbeat-seconds", HEARTBEAT)
    second = replicas.start(url, "--replica-heartbeat-seconds", HEARTBEAT, "--roles", "worker")
    third = replicas.start(url, "--replica-heartbeat-seconds", HEARTBEAT, "--roles", "api,dispatcher")
    pids = {server.process.pid for server in (first, second, third)}

    # Every replica sees all three, alive, from the shared database.
    for server in (first, third):
        seen = _replicas_seen_by(server)
        assert set(seen) == pids, seen
        assert all(replica.alive for replica in seen.values())
        assert list(seen[second.process.pid].roles) == ["worker"]
        assert sorted(seen[third.process.pid].roles) == ["api", "dispatcher"]
    before = _replicas_seen_by(first)[second.process.pid].heartbeat_time.ToDatetime()
    wait_for(
        lambda: _replicas_seen_by(first)[second.process.pid].heartbeat_time.ToDatetime() > before,
        10,
        "a later heartbeat",
    )

    # A clean stop removes the row at once.
    assert second.stop() == 0
    assert set(_replicas_seen_by(first)) == pids - {second.process.pid}

    # A replica that dies stays listed, no longer alive after three missed heartbeats.
    third.stop(signal.SIGKILL)

    def dead() -> cluster_pb2.Replica | None:
        replica = _replicas_seen_by(first)[third.process.pid]
        return None if replica.alive else replica

    gone = wait_for(dead, 10, "the killed replica to turn not alive")
    assert gone.heartbeat_interval.ToTimedelta().total_seconds() == pytest.approx(float(HEARTBEAT))
    assert _replicas_seen_by(first)[first.process.pid].alive
