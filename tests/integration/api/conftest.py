"""An in-process server on a free port per test, over each database backend, and its stubs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from cronwire.v1 import (
    event_service_pb2_grpc,
    execution_service_pb2_grpc,
    job_service_pb2_grpc,
    schedule_service_pb2_grpc,
)
from cronwire_server.app import RunningServer, create_server
from cronwire_server.config import Settings


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[RunningServer]:
    # Tests call webhooks they serve on loopback; their jobs use the tests' private directories.
    settings = Settings(
        listen="127.0.0.1:0", database_url=database_url, allow_private_networks=True, allow_root_jobs=True
    )
    running = await create_server(settings)
    yield running
    await running.stop(grace=0)


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@pytest.fixture
def jobs(channel: grpc.aio.Channel) -> job_service_pb2_grpc.JobServiceStub:
    return job_service_pb2_grpc.JobServiceStub(channel)


@pytest.fixture
def schedules(channel: grpc.aio.Channel) -> schedule_service_pb2_grpc.ScheduleServiceStub:
    return schedule_service_pb2_grpc.ScheduleServiceStub(channel)


@pytest.fixture
def executions(channel: grpc.aio.Channel) -> execution_service_pb2_grpc.ExecutionServiceStub:
    return execution_service_pb2_grpc.ExecutionServiceStub(channel)


@pytest.fixture
def events(channel: grpc.aio.Channel) -> event_service_pb2_grpc.EventServiceStub:
    return event_service_pb2_grpc.EventServiceStub(channel)
