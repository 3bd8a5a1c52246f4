"""WatchEvents fan-out over a real channel, on each backend: many watchers with different filters
(namespace, job, event types, and the namespaces of the caller's key) each receive exactly their
events, in order, with the same content ListEvents gives; and a batch of events is serialized
once for every watcher whose filter takes the same events of it, not once per watcher."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf import field_mask_pb2

from cronwire.v1 import event_pb2, event_service_pb2, job_pb2, job_service_pb2
from cronwire.v1.event_service_pb2_grpc import EventServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire_server.api import event_service
from cronwire_server.app import RunningServer
from cronwire_server.core.model import Event, EventFilter, EventType
from cronwire_server.events import Batch, Delivery, Subscription, fan_out, fan_out_counts
from tests.integration.api.test_grpcurl import GRPCURL, grpcurl
from tests.integration.security.test_auth import Keys, bearer, make_keys, start
from tests.support import ServerProcess, eventually, start_server, wait_for

TEAM_A = "namespaces/team-a"
TEAM_B = "namespaces/team-b"
A1, A2, B1 = f"{TEAM_A}/jobs/a1", f"{TEAM_A}/jobs/a2", f"{TEAM_B}/jobs/b1"
CREATED = event_pb2.EVENT_TYPE_JOB_CREATED
UPDATED = event_pb2.EVENT_TYPE_JOB_UPDATED
ROUNDS = 6
WITHIN = 30.0


@pytest.fixture
async def keys(database_url: str) -> Keys:
    return await make_keys(database_url)


@pytest.fixture
async def server(database_url: str, keys: Keys) -> AsyncIterator[RunningServer]:
    # A short heartbeat: a watcher's first response (a heartbeat) shows it is subscribed.
    running = await start(database_url, rate_limit_per_key=0, watch_heartbeat_seconds=0.2)
    yield running
    await running.stop(grace=0)


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@dataclass
class Watch:
    token: str
    fields: dict[str, Any]
    events: list[event_pb2.Event] = field(default_factory=list)
    error: grpc.aio.AioRpcError | None = None
    ended: bool = False

    async def open(self, stub: EventServiceStub) -> asyncio.Task[None]:
        call = stub.WatchEvents(
            event_service_pb2.WatchEventsRequest(**self.fields), metadata=bearer(self.token)
        )
        first = await asyncio.wait_for(call.read(), WITHIN)
        assert isinstance(first, event_service_pb2.WatchEventsResponse), first
        assert not first.events, first
        return asyncio.create_task(self._read(call))

    async def _read(self, call: Any) -> None:
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                self.events.extend(response.events)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.error = error
        finally:
            self.ended = True


async def watching(stub: EventServiceStub, watches: list[Watch]) -> list[asyncio.Task[None]]:
    """Open every watch; each has received its first heartbeat (it is subscribed) on return."""
    return list(await asyncio.gather(*(w.open(stub) for w in watches)))


async def write_events(jobs: JobServiceStub, token: str) -> int:
    """Create a1, a2 (team-a) and b1 (team-b), then update all three ROUNDS times, concurrently
    (so that the hub's batches mix them); the number of events written."""
    names = (A1, A2, B1)
    for name in names:
        parent, _, job_id = name.rpartition("/jobs/")
        job = job_pb2.Job(executor="noop")
        await jobs.CreateJob(
            job_service_pb2.CreateJobRequest(parent=parent, job_id=job_id, job=job), metadata=bearer(token)
        )
    for round_ in range(ROUNDS):
        await asyncio.gather(
            *(
                jobs.UpdateJob(
                    job_service_pb2.UpdateJobRequest(
                        job=job_pb2.Job(name=name, description=f"round {round_}"),
                        update_mask=field_mask_pb2.FieldMask(paths=["description"]),
                    ),
                    metadata=bearer(token),
                )
                for name in names
            )
        )
    return len(names) * (1 + ROUNDS)


async def received(watches: list[Watch], counts: list[int]) -> None:
    def done() -> bool:
        for watch in watches:
            assert not watch.ended, f"the watch {watch.fields} ended: {watch.error!r}"
        return all(len(w.events) >= count for w, count in zip(watches, counts, strict=True))

    await eventually(done, WITHIN, "every watcher's events")


async def test_watchers_with_different_filters_each_receive_exactly_their_events_in_order(
    channel: grpc.aio.Channel, keys: Keys
) -> None:
    stub, jobs = EventServiceStub(channel), JobServiceStub(channel)
    watches = [
        *(Watch(keys.admin, {}) for _ in range(3)),
        Watch(keys.admin, {"parent": "namespaces/-"}),
        *(Watch(keys.admin, {"parent": TEAM_A}) for _ in range(2)),
        Watch(keys.admin, {"parent": TEAM_B}),
        *(Watch(keys.admin, {"job": A1}) for _ in range(2)),
        Watch(keys.admin, {"job": A2}),
        Watch(keys.admin, {"event_types": [CREATED]}),
        Watch(keys.admin, {"parent": TEAM_A, "event_types": [UPDATED]}),
        # The key's namespaces scope a watch over every namespace.
        *(Watch(keys.viewer_a, {}) for _ in range(2)),
        Watch(keys.viewer_a, {"job": A2, "event_types": [UPDATED]}),
        Watch(keys.editor_b, {}),
    ]
    tasks = await watching(stub, watches)
    try:
        written = await write_events(jobs, keys.admin)

        async def listed(watch: Watch) -> list[event_pb2.Event]:
            request = event_service_pb2.ListEventsRequest(page_size=1000, **watch.fields)
            return list((await stub.ListEvents(request, metadata=bearer(watch.token))).events)

        everything = await eventually(
            lambda: _at_least(listed(watches[0]), written), WITHIN, f"{written} numbered events"
        )
        assert len(everything) == written
        expected = [await listed(w) for w in watches]
        await received(watches, [len(e) for e in expected])
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def jobs_of(events: list[event_pb2.Event]) -> set[str]:
        return {e.job for e in events}

    # What each filter should take, spelled out rather than trusted to ListEvents alone.
    by_key = {keys.admin: {A1, A2, B1}, keys.viewer_a: {A1, A2}, keys.editor_b: {B1}}
    for watch, wanted in zip(watches, expected, strict=True):
        assert watch.error is None
        assert [e.sequence for e in watch.events] == [e.sequence for e in wanted], watch.fields
        assert watch.events == wanted, watch.fields  # the same content, snapshots included
        sequences = [e.sequence for e in watch.events]
        assert sequences == sorted(set(sequences))
        jobs_wanted = set(by_key[watch.token])
        if "parent" in watch.fields and watch.fields["parent"] != "namespaces/-":
            jobs_wanted = {j for j in jobs_wanted if j.startswith(watch.fields["parent"] + "/")}
        if "job" in watch.fields:
            jobs_wanted &= {watch.fields["job"]}
        types = set(watch.fields.get("event_types", [CREATED, UPDATED]))
        assert jobs_of(watch.events) == jobs_wanted, watch.fields
        assert {e.type for e in watch.events} == types, watch.fields
        assert len(watch.events) == len(jobs_wanted) * ((CREATED in types) + ROUNDS * (UPDATED in types))


async def _at_least(found: Any, count: int) -> list[event_pb2.Event] | None:
    events: list[event_pb2.Event] = await found
    return events if len(events) >= count else None


async def test_each_batch_is_serialized_once_per_distinct_filter_result(
    channel: grpc.aio.Channel, keys: Keys
) -> None:
    stub, jobs = EventServiceStub(channel), JobServiceStub(channel)
    everything = [Watch(keys.admin, {}) for _ in range(5)]
    team_a = [
        *(Watch(keys.admin, {"parent": TEAM_A}) for _ in range(3)),
        # Another filter (the key's scope) that takes the same events: the same serialization.
        *(Watch(keys.viewer_a, {}) for _ in range(2)),
    ]
    a1 = [Watch(keys.admin, {"job": A1}) for _ in range(2)]
    watches = [*everything, *team_a, *a1]
    tasks = await watching(stub, watches)
    events_before, bodies_before = event_service.encode_counts.events, event_service.encode_counts.bodies
    reads_before, batches_before = fan_out_counts.reads, fan_out_counts.batches
    try:
        written = await write_events(jobs, keys.admin)
        per_job = written // 3
        await received(watches, [written] * 5 + [2 * per_job] * 5 + [per_job] * 2)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    reads = fan_out_counts.reads - reads_before
    batches = fan_out_counts.batches - batches_before
    bodies = event_service.encode_counts.bodies - bodies_before
    assert all(w.error is None for w in watches)
    # Every event serialized once, however many watchers it went to.
    assert event_service.encode_counts.events - events_before == written
    # One serialized body per batch the hub shared, and at most one batch per read for each of
    # the three distinct results (everything, team-a, a1), not one per filter or per watcher.
    assert bodies == batches, (bodies, batches)
    assert reads <= batches <= 3 * reads, (reads, batches)


def _event(sequence: int, namespace: str, job_id: str, type_: EventType = EventType.JOB_UPDATED) -> Event:
    return Event(
        sequence=sequence,
        type=type_,
        namespace=namespace,
        resource=f"namespaces/{namespace}/jobs/{job_id}",
        time=datetime(2026, 1, 1, tzinfo=UTC),
        job_id=job_id,
    )


def test_subscriptions_taking_the_same_events_of_a_read_share_one_batch() -> None:
    events = [_event(1, "team-a", "a1"), _event(2, "team-b", "b1"), _event(3, "team-a", "a2")]
    sizes = [10, 20, 30]
    everything = [Subscription(EventFilter(), 8) for _ in range(3)]
    everything.append(Subscription(EventFilter(namespaces=frozenset({"team-a", "team-b"})), 8))
    team_a = [Subscription(EventFilter(namespace="team-a"), 8) for _ in range(2)]
    team_a.append(Subscription(EventFilter(namespaces=frozenset({"team-a"})), 8))
    a1 = Subscription(EventFilter(job_id="a1"), 8)
    nothing = Subscription(EventFilter(namespace="team-c"), 8)
    batches_before = fan_out_counts.batches
    fan_out(events, sizes, [*everything, *team_a, a1, nothing])

    def taken(subscription: Subscription) -> Batch:
        assert subscription.queue.qsize() == 1
        return subscription.queue.get_nowait()

    whole = [taken(s) for s in everything]
    assert all(b is whole[0] for b in whole)
    assert whole[0].events is events
    assert whole[0].size == 60
    shared_a = [taken(s) for s in team_a]
    assert all(b is shared_a[0] for b in shared_a)
    assert [e.sequence for e in shared_a[0].events] == [1, 3]
    assert shared_a[0].size == 40
    assert [e.sequence for e in taken(a1).events] == [1]
    assert nothing.queue.empty()
    assert fan_out_counts.batches - batches_before == 3


async def test_a_watcher_behind_gets_the_waiting_batches_joined_in_order() -> None:
    subscription = Subscription(EventFilter(), 8)
    batches = [Batch([_event(3 * n + i + 1, "team-a", "a1") for i in range(3)], 100) for n in range(3)]
    for batch in batches:
        subscription.offer(batch)
    taken = await subscription.get()
    assert taken == batches
    assert subscription.queued_bytes == 0
    service = event_service.EventService(cast(Any, None))
    (joined,) = service._responses(Delivery(taken, 42))
    response = event_service_pb2.WatchEventsResponse.FromString(joined)
    assert [e.sequence for e in response.events] == list(range(1, 10))
    assert response.latest_sequence == 42
    # A batch sent alone is the same bytes for every watcher with that bookmark.
    alone = service._responses(Delivery([batches[0]], 42))
    assert service._responses(Delivery([batches[0]], 42))[0] is alone[0]
    assert event_service_pb2.WatchEventsResponse.FromString(alone[0]).events[:] == response.events[:3]


def test_grpcurl_reads_watch_and_list_responses_as_before(tmp_path: Path) -> None:
    """The bytes the service serializes itself are the same protobuf messages to a client that
    knows only what reflection tells it."""
    if GRPCURL is None:
        pytest.skip("grpcurl is not installed")
    running = start_server(f"sqlite:///{tmp_path / 'cronwire.db'}", tmp_path)
    try:
        for job_id in ("first", "second"):
            created = grpcurl(
                running,
                "cronwire.v1.JobService/CreateJob",
                data={"parent": "namespaces/default", "job_id": job_id, "job": {"executor": "noop"}},
            )
            assert created.returncode == 0, created.stderr
        listed = wait_for(
            lambda: _grpcurl_events(running, "ListEvents", {"parent": "namespaces/default"}, 2),
            30,
            "two numbered events",
        )
        (listing,) = listed
        first, second = listing["events"]
        assert first["job"] == "namespaces/default/jobs/first"
        assert second["job"] == "namespaces/default/jobs/second"
        assert second["type"] == "EVENT_TYPE_JOB_CREATED"
        assert second["job_snapshot"]["executor"] == "noop"
        # A replay from the first: the second, then grpcurl gives up waiting for more.
        watched = _grpcurl_events(running, "WatchEvents", {"after_sequence": first["sequence"]}, 1)
        assert watched is not None
        assert [e for response in watched for e in response.get("events", [])] == [second]
        assert int(watched[0]["latest_sequence"]) >= int(second["sequence"])
    finally:
        running.stop()


def _grpcurl_events(
    server: ServerProcess, method: str, request: dict[str, object], count: int
) -> list[dict[str, Any]] | None:
    """The responses grpcurl printed for `method`, if they hold at least `count` events."""
    assert GRPCURL is not None
    command = [GRPCURL, "-plaintext", "-max-time", "2", "-d", json.dumps(request), server.target]
    command.append(f"cronwire.v1.EventService/{method}")
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    decoder, text, responses = json.JSONDecoder(), result.stdout, []
    position = 0
    while (start := text.find("{", position)) >= 0:
        response, position = decoder.raw_decode(text, start)
        responses.append(response)
    events = sum(len(r.get("events", [])) for r in responses)
    return responses if events >= count else None
