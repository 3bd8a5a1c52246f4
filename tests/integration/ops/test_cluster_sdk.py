"""Client.cluster_status, AsyncClient.cluster_status and `cronwire status` against a real server."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest

import cronwire
from cronwire._values import parse_duration
from cronwire.cli import EXIT_USAGE, main
from cronwire_server.app import RunningServer, create_server
from cronwire_server.config import Settings
from tests.integration.client.conftest import ThreadedServer


@pytest.fixture
def target(database_url: str) -> Iterator[str]:
    server = ThreadedServer(database_url)
    yield server.target
    server.stop()


@pytest.fixture
async def running(database_url: str) -> AsyncIterator[RunningServer]:
    server = await create_server(Settings(listen="127.0.0.1:0", database_url=database_url))
    yield server
    await server.stop(grace=0)


def test_the_sync_client_reads_the_cluster_status(target: str) -> None:
    with cronwire.Client(target, namespace="ops") as client:
        client.create_job("hello", executor="noop")
        ran = client.run("hello")
        status = client.cluster_status()
    assert ran.state == cronwire.ExecutionState.SUCCEEDED
    assert status.server_version == cronwire.__version__
    (replica,) = status.replicas
    assert (replica.hostname, replica.pid, replica.alive) == (socket.gethostname(), os.getpid(), True)
    assert replica.roles == ["api", "dispatcher", "worker"]
    assert replica.heartbeat_interval == timedelta(seconds=5)
    assert (status.queued_executions, status.running_executions) == (0, 0)
    assert status.oldest_queued_execution is None
    assert status.scheduling_lag.window == timedelta(minutes=5)
    assert status.scheduling_lag.samples == 1
    assert timedelta(0) <= status.scheduling_lag.p50 <= status.scheduling_lag.p99 < timedelta(seconds=30)


async def test_the_async_client_reads_the_cluster_status(running: RunningServer) -> None:
    async with cronwire.AsyncClient(f"127.0.0.1:{running.port}") as client:
        status = await client.cluster_status(lag_window=timedelta(minutes=1))
        assert status.scheduling_lag.window == timedelta(minutes=1)
        assert [r.alive for r in status.replicas] == [True]
        assert (await client.cluster_status(lag_window=90)).scheduling_lag.window == timedelta(seconds=90)
        with pytest.raises(cronwire.InvalidArgument) as raised:
            await client.cluster_status(lag_window=-1)
    assert [v.field for v in raised.value.field_violations] == ["lag_window"]


def test_cronwire_status(
    target: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CRONWIRE_SERVER", target)
    monkeypatch.delenv("CRONWIRE_TOKEN", raising=False)

    assert main(["status"]) == 0
    human = capsys.readouterr().out
    assert "replicas: 1 alive of 1" in human
    assert f"{socket.gethostname()}:{os.getpid()}:" in human
    assert "queued:" in human
    assert "no executions started" in human

    assert main(["status", "-o", "json", "--lag-window", "90s"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["server_version"] == cronwire.__version__
    assert document["queued_executions"] == 0
    assert parse_duration(document["scheduling_lag"]["window"]) == timedelta(seconds=90)
    assert [r["alive"] for r in document["replicas"]] == [True]
    assert document["replicas"][0]["pid"] == os.getpid()

    assert main(["status", "--lag-window", "soon"]) == EXIT_USAGE
    assert "--lag-window: invalid duration 'soon'" in capsys.readouterr().err
