"""Page tokens over real channels on each backend: the server honours only the tokens it issued,
and a key's tokens carry nothing from outside its namespaces."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator

import grpc
import pytest

from cronwire.v1 import event_service_pb2, job_pb2, job_service_pb2, key_pb2, key_service_pb2
from cronwire.v1.event_service_pb2_grpc import EventServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.key_service_pb2_grpc import KeyServiceStub
from cronwire_server.app import RunningServer
from tests.integration.api.test_execution_service import eventually
from tests.integration.security.test_auth import TEAM_A, Keys, bearer, make_keys, start
from tests.support import status_details


@pytest.fixture
async def keys(database_url: str) -> Keys:
    return await make_keys(database_url)


@pytest.fixture
async def channel(database_url: str, keys: Keys) -> AsyncIterator[grpc.aio.Channel]:
    running: RunningServer = await start(database_url, rate_limit_per_key=0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield channel
    finally:
        await running.stop(grace=0)


def unsigned_token(after: str, filters: object) -> str:
    """A token as anyone could make one from the server's source: the cursor and the filters'
    fingerprint, base64-encoded JSON."""
    fingerprint = hashlib.sha256(json.dumps(filters, sort_keys=True, default=str).encode()).hexdigest()[:16]
    raw = json.dumps({"a": after, "f": fingerprint}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def cursor_of(token: str) -> str:
    """The cursor a token carries, readable by whoever holds it."""
    encoded = token.partition(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))["a"])


async def refused_as_invalid(call: object) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call  # type: ignore[misc]
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
    violations, _ = status_details(refused.value)
    assert "page_token" in violations, violations


async def test_forged_and_edited_page_tokens_are_invalid_argument(
    channel: grpc.aio.Channel, keys: Keys
) -> None:
    metadata = bearer(keys.admin)
    jobs, events = JobServiceStub(channel), EventServiceStub(channel)
    for index in range(3):
        await jobs.CreateJob(
            job_service_pb2.CreateJobRequest(
                parent=TEAM_A, job_id=f"j{index}", job=job_pb2.Job(executor="noop")
            ),
            metadata=metadata,
        )
    filters = {"namespace": "", "job": "", "schedule": "", "types": [], "after": 0}

    async def numbered() -> bool:  # events are listed once the sequencer has numbered them
        listed = await events.ListEvents(event_service_pb2.ListEventsRequest(), metadata=metadata)
        return len(listed.events) >= 3

    await eventually(numbered, 10, "the jobs' events to be numbered")
    # A cursor the store cannot read: it used to reach the query and come back INTERNAL.
    for cursor in ("not-a-sequence", "1e999", "-1 OR 1=1"):
        forged = unsigned_token(cursor, filters)
        await refused_as_invalid(
            events.ListEvents(
                event_service_pb2.ListEventsRequest(page_size=1, page_token=forged), metadata=metadata
            )
        )
    issued = (
        await events.ListEvents(event_service_pb2.ListEventsRequest(page_size=1), metadata=metadata)
    ).next_page_token
    assert issued
    # The same cursor with another value under the issued signature.
    signature = issued.partition(".")[2]
    edited = f"{unsigned_token('0', filters)}.{signature}"
    await refused_as_invalid(
        events.ListEvents(
            event_service_pb2.ListEventsRequest(page_size=1, page_token=edited), metadata=metadata
        )
    )
    listed = job_service_pb2.ListJobsRequest(parent=TEAM_A, page_size=1)
    await refused_as_invalid(
        jobs.ListJobs(
            job_service_pb2.ListJobsRequest(parent=TEAM_A, page_size=1, page_token=unsigned_token("j0", {})),
            metadata=metadata,
        )
    )
    # Tokens the server issued still page through everything.
    names: list[str] = []
    while True:
        page = await jobs.ListJobs(listed, metadata=metadata)
        names += [j.name for j in page.jobs]
        if not page.next_page_token:
            break
        listed.page_token = page.next_page_token
    assert names == [f"{TEAM_A}/jobs/j{index}" for index in range(3)]


async def test_list_keys_tokens_carry_only_keys_of_the_callers_namespaces(
    channel: grpc.aio.Channel, keys: Keys
) -> None:
    service = KeyServiceStub(channel)
    for namespace in ("team-a", "team-b") * 4:
        await service.CreateKey(
            key_service_pb2.CreateKeyRequest(
                key=key_pb2.Key(namespaces=[namespace], role=key_pb2.ROLE_VIEWER)
            ),
            metadata=bearer(keys.admin),
        )
    everything = await service.ListKeys(
        key_service_pb2.ListKeysRequest(page_size=1000), metadata=bearer(keys.admin)
    )
    visible = {k.name.removeprefix("keys/") for k in everything.keys if list(k.namespaces) == ["team-a"]}
    hidden = {k.name.removeprefix("keys/") for k in everything.keys} - visible

    request = key_service_pb2.ListKeysRequest(page_size=1)
    seen: list[str] = []
    while True:
        page = await service.ListKeys(request, metadata=bearer(keys.admin_a))
        seen += [k.name.removeprefix("keys/") for k in page.keys]
        if not page.next_page_token:
            break
        cursor = cursor_of(page.next_page_token)
        assert cursor not in hidden, "a page token named a key of another namespace"
        assert cursor in visible
        request.page_token = page.next_page_token
    assert sorted(seen) == sorted(visible)
