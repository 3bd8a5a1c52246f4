"""A server started with --max-running-per-namespace hands a remote worker, however many slots it
has, no more runs of a namespace at once than the limit; the next goes out as one ends, and a
namespace at its limit does not keep the worker from another namespace's work. Over a real
WorkerService stream, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import struct_pb2

from cronwire.v1 import job_pb2, job_service_pb2, worker_pb2, worker_service_pb2
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.worker_service_pb2_grpc import WorkerServiceStub
from cronwire_server.app import RunningServer, create_server
from cronwire_server.config import Settings

LIMIT = 2
BUSY, OTHER = "busy", "other"
# How long the test waits for the next assignment at most.
DEADLINE = 15.0


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[RunningServer]:
    settings = Settings(
        listen="127.0.0.1:0",
        database_url=database_url,
        roles=frozenset({"api", "dispatcher"}),
        max_running_per_namespace=LIMIT,
    )
    running = await create_server(settings)
    try:
        yield running
    finally:
        await running.stop(0)


class Worker:
    """One stream with many slots: what it was handed and still holds, by namespace."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = WorkerServiceStub(channel).Connect()
        self.held: dict[str, str] = {}  # execution name -> lease token
        self.most: Counter[str] = Counter()  # the most held at once, by namespace
        self.handed: list[str] = []

    def holding(self, namespace: str) -> int:
        return sum(1 for name in self.held if name.startswith(f"namespaces/{namespace}/"))

    async def next_assignment(self) -> str:
        while True:
            response = await self.call.read()
            assert response is not grpc.aio.EOF, "the stream ended"
            kind = response.WhichOneof("message")
            assert kind in ("welcome", "assignment"), response
            if kind == "assignment":
                name = response.assignment.execution
                self.held[name] = response.assignment.lease_token
                self.handed.append(name)
                namespace = name.split("/")[1]
                self.most[namespace] = max(self.most[namespace], self.holding(namespace))
                return name

    async def finish(self, name: str) -> None:
        token = self.held.pop(name)
        result = worker_pb2.TaskResult(
            execution=name, lease_token=token, success=worker_pb2.TaskSuccess(result=struct_pb2.Value())
        )
        await self.call.write(worker_service_pb2.ConnectRequest(result=result))


async def queue(jobs: JobServiceStub, namespace: str, runs: int) -> None:
    parameters = struct_pb2.Struct()
    parameters.update({"queue": "q"})
    job = job_pb2.Job(executor="remote", parameters=parameters)
    parent = f"namespaces/{namespace}"
    await jobs.CreateJob(job_service_pb2.CreateJobRequest(parent=parent, job_id="work", job=job))
    for _ in range(runs):
        await jobs.RunJob(job_service_pb2.RunJobRequest(name=f"{parent}/jobs/work"))


async def test_a_worker_with_many_slots_never_holds_more_of_a_namespace_than_the_limit(
    server: RunningServer,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        jobs = JobServiceStub(channel)
        await queue(jobs, BUSY, 6)
        await queue(jobs, OTHER, 1)
        worker = Worker(channel)
        hello = worker_pb2.WorkerHello(identity="wide", queues=["q"], free_slots=20)
        await worker.call.write(worker_service_pb2.ConnectRequest(hello=hello))
        # The limit's worth of the busy namespace, and the other namespace's run beside them.
        while worker.holding(BUSY) < LIMIT or worker.holding(OTHER) < 1:
            await asyncio.wait_for(worker.next_assignment(), DEADLINE)
        # Each run of the busy namespace that ends lets one more go out, until all have run.
        done = 0
        while done < 6:
            name = next(n for n in worker.held if n.startswith(f"namespaces/{BUSY}/"))
            await worker.finish(name)
            done += 1
            if done <= 6 - LIMIT:
                while worker.holding(BUSY) < LIMIT:
                    await asyncio.wait_for(worker.next_assignment(), DEADLINE)
        worker.call.cancel()
    assert worker.most[BUSY] == LIMIT, worker.most
    assert len([n for n in worker.handed if n.startswith(f"namespaces/{BUSY}/")]) == 6
