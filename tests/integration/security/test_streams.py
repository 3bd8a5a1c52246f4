"""Open streams and the keys that opened them, over real channels on each backend.

A stream is admitted once, when it opens; these tests show that it does not outlive its key:
WatchEvents and StreamExecutionLogs opened before a revocation end UNAUTHENTICATED within the
key-cache period after it, even while they wait with nothing to send. And a key, or all keys
together, can hold only so many streams open on a replica.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from cronwire.v1 import (
    event_service_pb2,
    execution_service_pb2,
    job_pb2,
    job_service_pb2,
    key_pb2,
    key_service_pb2,
)
from cronwire.v1.event_service_pb2_grpc import EventServiceStub
from cronwire.v1.execution_service_pb2_grpc import ExecutionServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.key_service_pb2_grpc import KeyServiceStub
from cronwire_server.app import RunningServer
from tests.integration.api.test_execution_service import eventually
from tests.integration.security.test_auth import TEAM_A, Keys, bearer, make_keys, start

KEY_CACHE_SECONDS = 1.0
# Scheduling noise on a shared machine, on top of the promised period.
SLACK = 1.5


@pytest.fixture
async def keys(database_url: str) -> Keys:
    return await make_keys(database_url)


@pytest.fixture
async def server(database_url: str, keys: Keys) -> AsyncIterator[RunningServer]:
    # No worker: a run stays QUEUED, so a followed log stream waits with nothing to send;
    # a long heartbeat keeps an idle watch silent too.
    running = await start(
        database_url,
        rate_limit_per_key=0,
        key_cache_seconds=KEY_CACHE_SECONDS,
        watch_heartbeat_seconds=600.0,
        roles=frozenset({"api", "dispatcher"}),
    )
    yield running
    await running.stop(grace=0)


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


async def viewer_key(channel: grpc.aio.Channel, admin: str) -> tuple[str, str]:
    created = await KeyServiceStub(channel).CreateKey(
        key_service_pb2.CreateKeyRequest(key=key_pb2.Key(namespaces=["team-a"], role=key_pb2.ROLE_VIEWER)),
        metadata=bearer(admin),
    )
    return created.key.name, created.token


async def ended_with(call: Any) -> tuple[grpc.StatusCode, float]:
    """Read `call` to its end; its status code and the monotonic time it ended."""
    try:
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as error:
        return error.code(), time.monotonic()
    except asyncio.CancelledError:  # the test cancelled the call
        return grpc.StatusCode.CANCELLED, time.monotonic()
    return grpc.StatusCode.OK, time.monotonic()


async def test_open_streams_end_unauthenticated_within_the_key_cache_period_after_revocation(
    channel: grpc.aio.Channel, keys: Keys
) -> None:
    jobs = JobServiceStub(channel)
    await jobs.CreateJob(
        job_service_pb2.CreateJobRequest(parent=TEAM_A, job_id="waits", job=job_pb2.Job(executor="noop")),
        metadata=bearer(keys.admin),
    )
    run = await jobs.RunJob(
        job_service_pb2.RunJobRequest(name=f"{TEAM_A}/jobs/waits"), metadata=bearer(keys.admin)
    )
    name, token = await viewer_key(channel, keys.admin)
    _, other = await viewer_key(channel, keys.admin)

    def open_streams(token: str) -> list[Any]:
        metadata = bearer(token)
        watch = EventServiceStub(channel).WatchEvents(
            event_service_pb2.WatchEventsRequest(parent=TEAM_A, after_sequence=1), metadata=metadata
        )
        logs = ExecutionServiceStub(channel).StreamExecutionLogs(
            execution_service_pb2.StreamExecutionLogsRequest(name=run.execution.name, follow=True),
            metadata=metadata,
        )
        return [watch, logs]

    revoked_streams, kept_streams = open_streams(token), open_streams(other)
    # Both are admitted and serving: the replay reaches the watcher.
    first = await revoked_streams[0].read()
    assert first.events
    ending = [asyncio.ensure_future(ended_with(call)) for call in revoked_streams]
    kept = [asyncio.ensure_future(ended_with(call)) for call in kept_streams]
    await asyncio.sleep(KEY_CACHE_SECONDS)  # well into a cached period for the key
    assert not any(task.done() for task in ending)

    await KeyServiceStub(channel).RevokeKey(
        key_service_pb2.RevokeKeyRequest(name=name), metadata=bearer(keys.admin)
    )
    revoked_at = time.monotonic()
    results = await asyncio.wait_for(asyncio.gather(*ending), KEY_CACHE_SECONDS * 10)
    for code, at in results:
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert at - revoked_at <= KEY_CACHE_SECONDS + SLACK
    # Streams of other keys go on.
    await asyncio.sleep(KEY_CACHE_SECONDS)
    assert not any(task.done() for task in kept)
    for call in kept_streams:
        call.cancel()
    await asyncio.gather(*kept)


async def test_streams_are_capped_per_key_and_per_replica(database_url: str, keys: Keys) -> None:
    running = await start(
        database_url,
        rate_limit_per_key=0,
        watch_heartbeat_seconds=0.2,
        max_streams_per_key=2,
        max_streams_per_replica=3,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            events = EventServiceStub(channel)

            async def opened(token: str) -> Any:
                call = events.WatchEvents(
                    event_service_pb2.WatchEventsRequest(parent=TEAM_A), metadata=bearer(token)
                )
                await call.read()  # a heartbeat: it is open
                return call

            async def refused(token: str) -> str:
                call = events.WatchEvents(
                    event_service_pb2.WatchEventsRequest(parent=TEAM_A), metadata=bearer(token)
                )
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await call.read()
                assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.value
                return error.value.details() or ""

            first = [await opened(keys.viewer_a), await opened(keys.viewer_a)]
            assert "--max-streams-per-key" in await refused(keys.viewer_a)
            other = await opened(keys.editor_a)
            # Three open on the replica: another key is refused too.
            assert "--max-streams-per-replica" in await refused(keys.admin)
            # A stream that ends gives its place back.
            first[0].cancel()

            async def reopened() -> Any:
                try:
                    return await opened(keys.viewer_a)
                except grpc.aio.AioRpcError:
                    return None

            again = await eventually(reopened, 5, "a place to free up")
            for call in (first[1], other, again):
                call.cancel()
    finally:
        await running.stop(grace=0)
