"""Helpers of the event-stream tests: grpc.aio stubs on a replica, watchers that read a
WatchEvents stream in the background, ListEvents page by page, and the ordering checks.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from cronwire.v1 import event_pb2, event_service_pb2, job_pb2, job_service_pb2
from cronwire.v1.event_service_pb2_grpc import EventServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from tests.support import eventually

T = TypeVar("T")

Event = event_pb2.Event
QUEUED = event_pb2.EVENT_TYPE_EXECUTION_QUEUED
STARTED = event_pb2.EVENT_TYPE_EXECUTION_STARTED
SUCCEEDED = event_pb2.EVENT_TYPE_EXECUTION_SUCCEEDED
RUN_TO_SUCCESS = [QUEUED, STARTED, SUCCEEDED]
RPC_TIMEOUT = 30.0
PAGE_SIZE = 1000
# A channel that never grows its HTTP/2 windows past the initial 64 KiB (no BDP probing),
# so that a stream its client stops reading backs up into the server quickly.
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0)]


def type_name(event_type: int) -> str:
    return event_pb2.EventType.Name(event_type)  # type: ignore[arg-type]


class Stubs:
    """grpc.aio stubs on one channel to one replica."""

    def __init__(self, target: str, options: Sequence[tuple[str, Any]] = ()) -> None:
        self.channel = grpc.aio.insecure_channel(target, options=list(options))
        self.events = EventServiceStub(self.channel)
        self.jobs = JobServiceStub(self.channel)
        self.schedules = ScheduleServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close(None)

    async def create_job(self, parent: str, job_id: str, **fields: Any) -> job_pb2.Job:
        job = json_format.ParseDict({"executor": "noop", **fields}, job_pb2.Job())
        request = job_service_pb2.CreateJobRequest(parent=parent, job_id=job_id, job=job)
        return (await self.jobs.CreateJob(request, timeout=RPC_TIMEOUT)).job

    async def run_job(self, job: str, **fields: Any) -> str:
        """RunJob; the name of the execution queued."""
        request = json_format.ParseDict({"name": job, **fields}, job_service_pb2.RunJobRequest())
        return str((await self.jobs.RunJob(request, timeout=RPC_TIMEOUT)).execution.name)

    async def run_many(self, job: str, count: int, concurrency: int = 16, **fields: Any) -> list[str]:
        """`count` RunJob calls, at most `concurrency` in flight; the executions' names."""
        gate = asyncio.Semaphore(concurrency)

        async def one() -> str:
            async with gate:
                return await self.run_job(job, **fields)

        return list(await asyncio.gather(*(one() for _ in range(count))))

    async def list_events(self, **fields: Any) -> list[Event]:
        """Every retained event matching `fields` (ListEventsRequest fields), page by page."""
        found: list[Event] = []
        token = ""
        while True:
            request = event_service_pb2.ListEventsRequest(page_size=PAGE_SIZE, page_token=token, **fields)
            response = await self.events.ListEvents(request, timeout=RPC_TIMEOUT)
            found.extend(response.events)
            token = response.next_page_token
            if not token:
                return found

    async def latest_sequence(self) -> int:
        """The sequence of the newest numbered event (0 when there is none)."""
        events = await self.list_events()
        return events[-1].sequence if events else 0

    async def numbered(self, count: int, within: float = 30.0, **fields: Any) -> list[Event]:
        """The retained events matching `fields`, once at least `count` of them are numbered
        (an event is written unnumbered with its change; a sequencer numbers it a moment later)."""

        async def enough() -> list[Event] | None:
            found = await self.list_events(**fields)
            return found if len(found) >= count else None

        return await eventually(enough, within, f"{count} numbered events")


class Watcher:
    """One WatchEvents stream, read by a background task (unless told not to read yet)."""

    def __init__(self, stub: EventServiceStub, *, read: bool = True, **fields: Any) -> None:
        self.request = event_service_pb2.WatchEventsRequest(**fields)
        self.call = stub.WatchEvents(self.request)
        self.events: list[Event] = []
        # (monotonic time, latest_sequence) of every heartbeat (a response without events).
        self.heartbeats: list[tuple[float, int]] = []
        self.bookmark = 0  # latest_sequence of the last response
        self.error: grpc.aio.AioRpcError | None = None
        self.ended = False
        self._task: asyncio.Task[None] | None = None
        if read:
            self.start()

    def start(self) -> None:
        """Start (or resume) reading the stream."""
        assert self._task is None, "already reading"
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                response = await self.call.read()
                if response is grpc.aio.EOF:
                    return
                self._record(response)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.error = error
        finally:
            self.ended = True

    async def read_one(self, within: float) -> None:
        """Read one response here and now (before `start`)."""
        assert self._task is None, "already reading in the background"
        self._record(await asyncio.wait_for(self.call.read(), within))

    def _record(self, response: object) -> None:
        assert isinstance(response, event_service_pb2.WatchEventsResponse), response
        if response.events:
            self.events.extend(response.events)
        else:
            self.heartbeats.append((time.monotonic(), response.latest_sequence))
        self.bookmark = response.latest_sequence

    @property
    def last_sequence(self) -> int:
        return self.events[-1].sequence if self.events else 0

    def sequences(self) -> list[int]:
        return [e.sequence for e in self.events]

    async def wait_until(self, sequence: int, within: float, what: str = "") -> None:
        """Until an event or a bookmark at or past `sequence` arrived; fails if the stream ended."""

        def reached() -> bool:
            if self.ended:
                raise AssertionError(f"the stream ended before {sequence} ({what}): {self.error!r}")
            return self.last_sequence >= sequence or self.bookmark >= sequence

        await eventually(reached, within, f"sequence {sequence} on a watcher {what}")

    async def wait_for_end(self, within: float) -> grpc.aio.AioRpcError | None:
        await eventually(lambda: self.ended, within, "the stream to end")
        return self.error

    async def stop(self) -> None:
        self.call.cancel()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


def assert_contiguous(events: Sequence[Event], after: int) -> None:
    """Sequences are after+1, after+2, ...: strictly increasing, no gap, no duplicate."""
    sequences = [e.sequence for e in events]
    expected = list(range(after + 1, after + 1 + len(sequences)))
    if sequences != expected:
        wrong = next(i for i, (got, want) in enumerate(zip(sequences, expected, strict=True)) if got != want)
        raise AssertionError(
            f"sequences not contiguous after {after}: at index {wrong} got "
            f"{sequences[max(0, wrong - 3) : wrong + 3]}, expected {expected[max(0, wrong - 3) : wrong + 3]}"
        )


def assert_increasing(events: Sequence[Event]) -> None:
    for before, after in itertools.pairwise(events):
        assert after.sequence > before.sequence, f"sequence {after.sequence} after {before.sequence}"


def by_execution(events: Iterable[Event]) -> dict[str, list[int]]:
    """The event types of each execution, in the order received."""
    types: dict[str, list[int]] = defaultdict(list)
    for event in events:
        if event.HasField("execution"):
            types[event.resource].append(event.type)
    return types


def assert_ran_to_success(events: Iterable[Event], executions: Iterable[str]) -> None:
    """Every execution named has exactly QUEUED -> STARTED -> SUCCEEDED, in that order."""
    types = by_execution(events)
    for name in executions:
        got = [type_name(t) for t in types.get(name, [])]
        assert got == [type_name(t) for t in RUN_TO_SUCCESS], f"{name}: {got}"


def succeeded(events: Iterable[Event]) -> set[str]:
    return {e.resource for e in events if e.type == SUCCEEDED}


def same_events(got: Sequence[Event], want: Sequence[Event]) -> None:
    """The same events, field for field, in the same order."""
    assert [e.sequence for e in got] == [e.sequence for e in want]
    for a, b in zip(got, want, strict=True):
        assert a == b, f"event {a.sequence} differs:\n{a}\nvs\n{b}"
