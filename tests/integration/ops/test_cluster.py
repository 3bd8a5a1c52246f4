"""ClusterService.GetClusterStatus over a real channel: replicas, queue, running executions, lag."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import duration_pb2
from sqlalchemy.engine import Connection

from cronwire import __version__
from cronwire.v1 import cluster_service_pb2, cluster_service_pb2_grpc, job_pb2, job_service_pb2
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire_server.app import RunningServer, create_server
from cronwire_server.auth.keys import Role
from cronwire_server.auth.manage import KeyManager
from cronwire_server.auth.principal import OPEN
from cronwire_server.config import Settings
from cronwire_server.storage.sql_keys import KeyStore
from cronwire_server.storage.sql_store import create_engine
from cronwire_server.storage.tables import executions
from tests.integration.ops.helpers import in_database, shift_times
from tests.support import status_details

PARENT = "namespaces/ops"
TIMEOUT = 15.0


async def _server(database_url: str, **settings: object) -> RunningServer:
    return await create_server(
        Settings(listen="127.0.0.1:0", database_url=database_url, **settings)  # type: ignore[arg-type]
    )


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[RunningServer]:
    running = await _server(database_url, replica_heartbeat_seconds=0.5)
    yield running
    await running.stop(grace=0)


async def _status(
    target: str, window: timedelta | None = None
) -> cluster_service_pb2.GetClusterStatusResponse:
    request = cluster_service_pb2.GetClusterStatusRequest()
    if window is not None:
        request.lag_window.FromTimedelta(window)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = cluster_service_pb2_grpc.ClusterServiceStub(channel)
        return await stub.GetClusterStatus(request, timeout=TIMEOUT)


async def _poll(
    target: str, check: object, what: str, within: float = 20.0
) -> cluster_service_pb2.GetClusterStatusResponse:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        status = await _status(target)
        if check(status):  # type: ignore[operator]
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last status:\n{status}")
        await asyncio.sleep(0.05)


async def _run_noop(channel: grpc.aio.Channel, job_id: str, runs: int) -> list[str]:
    jobs = JobServiceStub(channel)
    await jobs.CreateJob(
        job_service_pb2.CreateJobRequest(parent=PARENT, job_id=job_id, job=job_pb2.Job(executor="noop")),
        timeout=TIMEOUT,
    )
    names = []
    for _ in range(runs):
        response = await jobs.RunJob(
            job_service_pb2.RunJobRequest(name=f"{PARENT}/jobs/{job_id}"), timeout=TIMEOUT
        )
        names.append(response.execution.name)
    return names


async def test_a_lone_server_reports_itself_and_an_idle_queue(server: RunningServer) -> None:
    status = await _status(f"127.0.0.1:{server.port}")
    assert status.server_version == __version__
    assert len(status.replicas) == 1
    (me,) = status.replicas
    assert (me.hostname, me.pid, me.version) == (socket.gethostname(), os.getpid(), __version__)
    assert set(me.roles) == {"api", "dispatcher", "worker"}
    assert me.alive
    assert me.heartbeat_interval.ToTimedelta() == timedelta(seconds=0.5)
    assert me.start_time.ToDatetime() <= me.heartbeat_time.ToDatetime()
    assert (status.queued_executions, status.running_executions) == (0, 0)
    assert not status.HasField("oldest_queued_execution")
    assert status.scheduling_lag.samples == 0
    assert status.scheduling_lag.window.ToTimedelta() == timedelta(minutes=5)


async def test_queue_depth_and_the_oldest_queued_execution(database_url: str) -> None:
    # Without the worker role nothing runs: what RunJob queues stays QUEUED.
    running = await _server(database_url, roles=frozenset({"api", "dispatcher"}))
    try:
        target = f"127.0.0.1:{running.port}"
        async with grpc.aio.insecure_channel(target) as channel:
            queued = await _run_noop(channel, "waits", 3)
        status = await _status(target)
        assert (status.queued_executions, status.running_executions) == (3, 0)
        oldest = status.oldest_queued_execution
        assert oldest.name == queued[0]
        assert oldest.job == f"{PARENT}/jobs/waits"
        assert oldest.create_time.ToDatetime() <= status.read_time.ToDatetime()
        assert set(status.replicas[0].roles) == {"api", "dispatcher"}
    finally:
        await running.stop(grace=0)


async def test_lag_percentiles_over_the_executions_started_in_the_window(
    server: RunningServer, database_url: str
) -> None:
    target = f"127.0.0.1:{server.port}"
    async with grpc.aio.insecure_channel(target) as channel:
        names = await _run_noop(channel, "lagging", 10)
    await _poll(
        target,
        lambda s: s.scheduling_lag.samples >= 10 and s.queued_executions == 0 and s.running_executions == 0,
        "10 executions to run",
    )
    # Lags of 1..10 s exactly: scheduled that long before each started.
    ids = [name.rsplit("/", 1)[1] for name in names]

    def set_lags(conn: Connection) -> None:
        for seconds, execution_id in enumerate(ids, start=1):
            start = conn.execute(
                sa.select(executions.c.start_time).where(executions.c.id == execution_id)
            ).scalar_one()
            conn.execute(
                sa.update(executions)
                .where(executions.c.id == execution_id)
                .values(scheduled_time=start - timedelta(seconds=seconds))
            )

    await in_database(database_url, set_lags)
    lag = (await _status(target)).scheduling_lag
    assert lag.samples == 10
    assert [lag.p50.ToTimedelta(), lag.p90.ToTimedelta(), lag.p99.ToTimedelta()] == [
        timedelta(seconds=5),
        timedelta(seconds=9),
        timedelta(seconds=10),
    ]
    # Five of them started an hour ago: outside a 30-minute window.
    await shift_times(database_url, ids[:5], -timedelta(hours=1), "start_time")
    recent = (await _status(target, timedelta(minutes=30))).scheduling_lag
    assert recent.samples == 5
    assert recent.window.ToTimedelta() == timedelta(minutes=30)
    assert recent.p50.ToTimedelta() == timedelta(seconds=8)


@pytest.mark.parametrize(
    ("seconds", "message"), [(-1, "must not be negative"), (8 * 86400, "must be at most 7 days")]
)
async def test_a_bad_lag_window_is_refused(server: RunningServer, seconds: int, message: str) -> None:
    request = cluster_service_pb2.GetClusterStatusRequest(lag_window=duration_pb2.Duration(seconds=seconds))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = cluster_service_pb2_grpc.ClusterServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetClusterStatus(request, timeout=TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations, _ = status_details(raised.value)
    assert message in violations["lag_window"]


async def _tokens(database_url: str) -> dict[str, str]:
    engine = create_engine(database_url, pool_size=1)
    manager = KeyManager(KeyStore(engine))
    try:
        return {
            who: (await manager.create(role, [namespace], "test", caller=OPEN))[1]
            for who, role, namespace in (
                ("editor", Role.EDITOR, "ops"),
                ("viewer", Role.VIEWER, "ops"),
                ("stranger", Role.VIEWER, "elsewhere"),
            )
        }
    finally:
        await engine.dispose()


async def test_the_oldest_queued_execution_is_named_only_to_keys_of_its_namespace(database_url: str) -> None:
    tokens = await _tokens(database_url)
    running = await _server(database_url, roles=frozenset({"api", "dispatcher"}), require_auth=True)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            jobs = JobServiceStub(channel)
            cluster = cluster_service_pb2_grpc.ClusterServiceStub(channel)

            def auth(who: str) -> list[tuple[str, str]]:
                return [("authorization", f"Bearer {tokens[who]}")]

            await jobs.CreateJob(
                job_service_pb2.CreateJobRequest(
                    parent=PARENT, job_id="waits", job=job_pb2.Job(executor="noop")
                ),
                metadata=auth("editor"),
                timeout=TIMEOUT,
            )
            queued = await jobs.RunJob(
                job_service_pb2.RunJobRequest(name=f"{PARENT}/jobs/waits"),
                metadata=auth("editor"),
                timeout=TIMEOUT,
            )
            request = cluster_service_pb2.GetClusterStatusRequest()
            mine = await cluster.GetClusterStatus(request, metadata=auth("viewer"), timeout=TIMEOUT)
            theirs = await cluster.GetClusterStatus(request, metadata=auth("stranger"), timeout=TIMEOUT)
    finally:
        await running.stop(grace=0)
    assert mine.oldest_queued_execution.name == queued.execution.name
    assert mine.oldest_queued_execution.job == f"{PARENT}/jobs/waits"
    assert theirs.queued_executions == 1
    assert (theirs.oldest_queued_execution.name, theirs.oldest_queued_execution.job) == ("", "")
    assert theirs.oldest_queued_execution.create_time == mine.oldest_queued_execution.create_time
