"""The event stream over real replicas on one PostgreSQL database: order without gaps
across replicas, resuming, many watchers, slow watchers, filters and heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from cronwire.v1 import event_pb2, event_service_pb2, schedule_pb2, schedule_service_pb2
from tests.support import ServerProcess, status_details
from tests.system.event_helpers import (
    SMALL_WINDOW,
    SUCCEEDED,
    Event,
    Stubs,
    Watcher,
    assert_contiguous,
    assert_ran_to_success,
    eventually,
    same_events,
    succeeded,
    type_name,
)
from tests.system.helpers import Replicas, worker_pid

pytestmark = pytest.mark.postgres

API_ONLY = ("--roles", "api", "--watch-heartbeat-seconds", "0.5")
RUNS_ELSEWHERE = ("--roles", "dispatcher,worker")
PARENT = "namespaces/events"
WITHIN = 60.0


@contextlib.asynccontextmanager
async def stubs_on(*servers: ServerProcess, options: Any = ()) -> AsyncIterator[list[Stubs]]:
    opened = [Stubs(s.target, options) for s in servers]
    try:
        yield opened
    finally:
        for stubs in opened:
            await stubs.close()


async def all_succeeded(watcher: Watcher, executions: list[str], within: float = WITHIN) -> None:
    await eventually(
        lambda: succeeded(watcher.events) >= set(executions),
        within,
        f"{len(executions)} executions to succeed on a watcher ({len(succeeded(watcher.events))} so far)",
        interval=0.05,
    )


async def test_a_watcher_on_an_api_replica_sees_the_runs_of_other_replicas_in_order(
    fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    url = fresh_database_url("postgres")
    api = replicas.start(url, *API_ONLY)
    first = replicas.start(url, *RUNS_ELSEWHERE)
    async with stubs_on(api) as (a,):
        job = await a.create_job(PARENT, "noop")
        bookmark = (await a.numbered(1))[-1].sequence
        watcher = Watcher(a.events, after_sequence=bookmark)

        # Phase 1: only `first` runs anything; phase 2: it is gone, `second` runs everything.
        on_first = await a.run_many(job.name, 30)
        await all_succeeded(watcher, on_first)
        second = replicas.start(url)  # every role
        assert first.stop(signal.SIGTERM) == 0, first.log()
        async with stubs_on(second) as (c,):
            on_second = await c.run_many(job.name, 30)
        await all_succeeded(watcher, on_second)
        final = await a.latest_sequence()
        await watcher.wait_until(final, WITHIN, "after both phases")
        await watcher.stop()

        assert_contiguous(watcher.events, bookmark)
        same_events(watcher.events, await a.list_events(after_sequence=bookmark))
        assert_ran_to_success(watcher.events, on_first + on_second)
        ran_by = {e.resource: worker_pid(e.execution.worker) for e in watcher.events if e.type == SUCCEEDED}
        assert {ran_by[name] for name in on_first} == {first.process.pid}
        assert {ran_by[name] for name in on_second} == {second.process.pid}
        assert watcher.error is None


async def test_a_watcher_that_reconnects_receives_exactly_what_it_missed(
    fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    url = fresh_database_url("postgres")
    api = replicas.start(url, *API_ONLY)
    full = replicas.start(url)
    async with stubs_on(api, full) as (a, b):
        job = await b.create_job(PARENT, "noop")
        bookmark = (await a.numbered(1))[-1].sequence
        runs = asyncio.create_task(b.run_many(job.name, 150, concurrency=2))

        # Three connections: cut mid-stream, resume on the same replica, cut, resume on another.
        segments: list[list[Event]] = []
        after = bookmark
        for stub, cut_at in ((a, 60), (a, 180), (b, 0)):
            watcher = Watcher(stub.events, after_sequence=after)
            if cut_at:
                await eventually(lambda w=watcher, n=cut_at: len(w.events) >= n, WITHIN, f"{cut_at} events")
                await watcher.stop()
                assert watcher.error is None
                segments.append(list(watcher.events))
                after = watcher.last_sequence
        executions = await runs
        history = await a.numbered(len(executions) * 3 + 1)  # the job's event and three per run
        assert_ran_to_success(history, executions)
        # Its bookmark (a heartbeat's, if nothing else) reaches the end: all was sent.
        await watcher.wait_until(history[-1].sequence, WITHIN)
        await watcher.stop()
        segments.append(list(watcher.events))

        history = await a.list_events(after_sequence=bookmark)
        for segment in segments:
            assert segment, "a connection received nothing"
            assert_contiguous(segment, segment[0].sequence - 1)
        joined = [e for segment in segments for e in segment]
        assert_contiguous(joined, bookmark)
        same_events(joined, history)
        assert_ran_to_success(joined, executions)


async def test_reconnecting_again_and_again_while_events_flow_leaves_no_gap(
    fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    """Each connection is the only watcher of its replica, so the replica's hub keeps going
    from "nobody watches" to "somebody does" while events are being numbered."""
    url = fresh_database_url("postgres")
    api = replicas.start(url, *API_ONLY)
    full = replicas.start(url)
    async with stubs_on(api, full) as (a, b):
        job = await b.create_job(PARENT, "noop")
        bookmark = (await a.numbered(1))[-1].sequence
        runs = asyncio.create_task(b.run_many(job.name, 200, concurrency=4))
        received: list[Event] = []
        after = bookmark
        connections = 0
        while not runs.done():
            watcher = Watcher(a.events, after_sequence=after)
            await eventually(lambda w=watcher: len(w.events) >= 3 or runs.done(), WITHIN, "3 events")
            await watcher.stop()
            assert watcher.error is None
            received.extend(watcher.events)
            after = watcher.last_sequence or after
            connections += 1
        executions = await runs
        history = await a.numbered(len(executions) * 3 + 1)
        last = Watcher(a.events, after_sequence=after)
        await last.wait_until(history[-1].sequence, WITHIN)
        await last.stop()
        received.extend(last.events)
        assert connections >= 10, connections
        assert_contiguous(received, bookmark)
        same_events(received, history[1:])


async def test_a_hundred_watchers_each_receive_every_event_of_a_burst(
    fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    url = fresh_database_url("postgres")
    api = replicas.start(url, *API_ONLY)
    full = replicas.start(url)
    async with stubs_on(api, full) as (a, b):
        job = await b.create_job(PARENT, "noop")
        bookmark = (await a.numbered(1))[-1].sequence
        watchers = [Watcher(a.events, after_sequence=bookmark) for _ in range(100)]
        executions = await b.run_many(job.name, 200, concurrency=32)
        await all_succeeded(watchers[0], executions, within=90)
        final = await a.latest_sequence()
        history = await a.list_events(after_sequence=bookmark)
        assert history[-1].sequence == final
        assert len(history) == 3 * len(executions)
        await asyncio.gather(*(w.wait_until(final, WITHIN, f"#{n}") for n, w in enumerate(watchers)))
        await asyncio.gather(*(w.stop() for w in watchers))

        assert_ran_to_success(history, executions)
        for number, watcher in enumerate(watchers):
            assert watcher.error is None, f"watcher {number}: {watcher.error!r}"
            assert watcher.sequences() == [e.sequence for e in history], f"watcher {number}"
        same_events(watchers[-1].events, history)


async def test_a_stalled_watcher_is_cut_off_and_the_others_keep_receiving(
    fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    url = fresh_database_url("postgres")
    api = replicas.start(url, *API_ONLY, "--watch-buffer", "2")
    full = replicas.start(url)
    async with stubs_on(api) as (a,), stubs_on(api, options=SMALL_WINDOW) as (slow,), stubs_on(full) as (b,):
        job = await b.create_job(PARENT, "noop")
        bookmark = (await a.numbered(1))[-1].sequence
        normal = Watcher(a.events, after_sequence=bookmark)
        stalled = Watcher(slow.events, after_sequence=bookmark, read=False)
        # Its first heartbeat proves it is subscribed; from now on nobody reads it.
        await stalled.read_one(10)
        assert stalled.heartbeats
        assert not stalled.events

        # ~450 events of ~2.5 KiB: far more than the HTTP/2 windows and the buffer of 2 batches.
        padding = {"pad": "x" * 2048}
        executions = await b.run_many(job.name, 150, concurrency=2, arguments=padding)
        await all_succeeded(normal, executions)
        final = await a.latest_sequence()
        await normal.wait_until(final, WITHIN)
        assert not normal.ended, normal.error

        stalled.start()
        error = await stalled.wait_for_end(WITHIN)
        assert error is not None, f"the stalled watcher was not cut off; it got {len(stalled.events)} events"
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        _, reason = status_details(error)
        assert reason == "WATCHER_TOO_SLOW", error
        assert f"after_sequence={stalled.last_sequence or bookmark}" in (error.details() or ""), (
            error.details(),
            stalled.last_sequence,
        )
        assert len(stalled.events) < len(normal.events)
        assert_contiguous(stalled.events, bookmark)
        same_events(stalled.events, normal.events[: len(stalled.events)])

        # Resuming from where it was cut off gives exactly the rest.
        resumed = Watcher(a.events, after_sequence=stalled.last_sequence or bookmark)
        await resumed.wait_until(final, WITHIN, "resumed")
        same_events(stalled.events + resumed.events, normal.events)
        await resumed.stop()
        assert not normal.ended, normal.error
        await normal.stop()
        assert_ran_to_success(normal.events, executions)


# Filters: what each watcher asks for, and the same as a predicate over the whole history.
FILTERS: dict[str, tuple[dict[str, Any], Callable[[Event], bool]]] = {
    "parent": ({"parent": "namespaces/ev-a"}, lambda e: e.namespace == "ev-a"),
    "job": ({"job": "namespaces/ev-a/jobs/j1"}, lambda e: e.job == "namespaces/ev-a/jobs/j1"),
    "parent and job": (
        {"parent": "namespaces/ev-a", "job": "namespaces/ev-a/jobs/j1"},
        lambda e: e.job == "namespaces/ev-a/jobs/j1",
    ),
    "schedule": (
        {"schedule": "namespaces/ev-a/schedules/s1"},
        lambda e: e.schedule == "namespaces/ev-a/schedules/s1",
    ),
    "types": (
        {"event_types": [SUCCEEDED, event_pb2.EVENT_TYPE_JOB_CREATED]},
        lambda e: e.type in (SUCCEEDED, event_pb2.EVENT_TYPE_JOB_CREATED),
    ),
    "parent and types": (
        {"parent": "namespaces/ev-b", "event_types": [event_pb2.EVENT_TYPE_EXECUTION_QUEUED]},
        lambda e: e.namespace == "ev-b" and e.type == event_pb2.EVENT_TYPE_EXECUTION_QUEUED,
    ),
    "job and types": (
        {"job": "namespaces/ev-a/jobs/j1", "event_types": [event_pb2.EVENT_TYPE_SCHEDULE_PAUSED]},
        lambda e: e.job == "namespaces/ev-a/jobs/j1" and e.type == event_pb2.EVENT_TYPE_SCHEDULE_PAUSED,
    ),
}


async def make_history(b: Stubs) -> list[str]:
    """Jobs, schedules and runs in two namespaces (a job id used in both); the executions."""
    a1 = await b.create_job("namespaces/ev-a", "j1")
    a2 = await b.create_job("namespaces/ev-a", "j2")
    b1 = await b.create_job("namespaces/ev-b", "j1")
    made = []
    for schedule_id in ("s1", "s2"):
        schedule = schedule_pb2.Schedule(job=a1.name, trigger={"cron": {"expression": "0 3 * * *"}})
        request = schedule_service_pb2.CreateScheduleRequest(
            parent="namespaces/ev-a", schedule_id=schedule_id, schedule=schedule
        )
        made.append((await b.schedules.CreateSchedule(request)).schedule.name)
    await b.schedules.PauseSchedule(schedule_service_pb2.PauseScheduleRequest(name=made[1]))
    backfill = schedule_service_pb2.BackfillScheduleRequest(name=made[0])
    backfill.start_time.FromJsonString("2026-01-01T00:00:00Z")
    backfill.end_time.FromJsonString("2026-01-04T00:00:00Z")
    ticks = list((await b.schedules.BackfillSchedule(backfill)).executions)
    assert len(ticks) == 3
    runs = [await b.run_job(job.name) for job in (a1, a1, a2, a2, b1, b1)]
    return ticks + runs


async def test_filters_return_only_what_they_name_in_watch_and_list(
    fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    url = fresh_database_url("postgres")
    api = replicas.start(url, *API_ONLY)
    full = replicas.start(url)
    async with stubs_on(api, full) as (a, b):
        await b.create_job("namespaces/ev-c", "before")
        bookmark = (await a.numbered(1))[-1].sequence
        watchers = {
            name: Watcher(a.events, after_sequence=bookmark, **fields)
            for name, (fields, _) in FILTERS.items()
        }
        unfiltered = Watcher(a.events, after_sequence=bookmark)
        executions = await make_history(b)
        await all_succeeded(unfiltered, executions)
        history = await a.list_events(after_sequence=bookmark)
        final = history[-1].sequence
        # A heartbeat bookmark at `final` means every matching event up to it was sent.
        for name, watcher in watchers.items():
            await watcher.wait_until(final, WITHIN, name)
        await unfiltered.wait_until(final, WITHIN)

        same_events(unfiltered.events, history)
        for name, (fields, matches) in FILTERS.items():
            expected = [e for e in history if matches(e)]
            assert expected, f"{name}: the history has nothing to find"
            assert len(expected) < len(history), f"{name}: the filter filters nothing"
            got = watchers[name].events
            assert [e.sequence for e in got] == [e.sequence for e in expected], (
                name,
                [(e.sequence, type_name(e.type), e.resource) for e in got],
            )
            listed = await a.list_events(after_sequence=bookmark, **fields)
            same_events(listed, expected)
            small_pages: list[Event] = []
            token = ""
            while True:
                request = event_service_pb2.ListEventsRequest(
                    after_sequence=bookmark, page_size=2, page_token=token, **fields
                )
                response = await a.events.ListEvents(request)
                small_pages.extend(response.events)
                token = response.next_page_token
                if not token:
                    break
            same_events(small_pages, expected)
        await asyncio.gather(*(w.stop() for w in (*watchers.values(), unfiltered)))
        assert all(w.error is None for w in watchers.values())


async def test_heartbeats_on_an_idle_stream_carry_the_latest_sequence(
    fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    url = fresh_database_url("postgres")
    api = replicas.start(url, *API_ONLY)
    full = replicas.start(url)
    async with stubs_on(api, full) as (a, b):
        await b.create_job(PARENT, "one")
        await b.create_job(PARENT, "two")
        latest = (await a.numbered(2))[-1].sequence
        idle = Watcher(a.events)
        elsewhere = Watcher(a.events, job=f"{PARENT}/jobs/unrelated")
        await eventually(lambda: len(idle.heartbeats) >= 3, 10, "three heartbeats")
        assert idle.events == []
        assert {sequence for _, sequence in idle.heartbeats} == {latest}
        gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(idle.heartbeats)]
        assert all(0.35 <= gap <= 3.0 for gap in gaps), gaps

        # An event the filter leaves out still moves the bookmark of its heartbeats.
        await b.create_job(PARENT, "three")
        newest = (await a.numbered(3))[-1]
        await eventually(lambda: idle.events, 10, "the new event on the unfiltered stream")
        assert [e.sequence for e in idle.events] == [newest.sequence]
        await eventually(
            lambda: elsewhere.heartbeats and elsewhere.heartbeats[-1][1] == newest.sequence,
            10,
            "a heartbeat carrying the new event's sequence",
        )
        assert elsewhere.events == []
        assert idle.error is None
        assert elsewhere.error is None
        await idle.stop()
        await elsewhere.stop()


async def test_a_list_page_token_from_one_replica_is_good_on_another(
    fresh_database_url: Callable[[str], str], replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a load balancer the next page may be asked of another replica. Each process
    hashes strings with its own random seed; two fixed, different seeds make that reproducible."""
    url = fresh_database_url("postgres")
    monkeypatch.setenv("PYTHONHASHSEED", "1")
    one = replicas.start(url)
    monkeypatch.setenv("PYTHONHASHSEED", "2")
    two = replicas.start(url, "--roles", "api")
    monkeypatch.delenv("PYTHONHASHSEED")
    async with stubs_on(one, two) as (a, b):
        job = await a.create_job(PARENT, "noop")
        runs = await a.run_many(job.name, 5)
        types = [
            event_pb2.EVENT_TYPE_EXECUTION_QUEUED,
            event_pb2.EVENT_TYPE_EXECUTION_STARTED,
            SUCCEEDED,
            event_pb2.EVENT_TYPE_EXECUTION_FAILED,
            event_pb2.EVENT_TYPE_EXECUTION_CANCELLED,
        ]
        fields: dict[str, Any] = {"parent": PARENT, "event_types": types}
        expected = await a.numbered(15, **fields)
        assert_ran_to_success(expected, runs)
        pages: list[Event] = []
        token = ""
        for stubs in itertools.cycle((a, b)):
            request = event_service_pb2.ListEventsRequest(page_size=4, page_token=token, **fields)
            try:
                response = await stubs.events.ListEvents(request)
            except grpc.aio.AioRpcError as error:
                violations, _ = status_details(error)
                raise AssertionError(
                    f"page {len(pages) // 4 + 1} on the other replica: {error.code()} {violations}"
                ) from None
            pages.extend(response.events)
            token = response.next_page_token
            if not token:
                break
        same_events(pages, expected)


async def test_a_burst_of_large_events_reaches_live_watchers_with_default_limits(
    fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    """Execution snapshots carry the run's arguments. A backfill queues all its ticks in one
    transaction, so they reach the watchers together; the server must still send them in
    messages a default client accepts (4 MiB)."""
    url = fresh_database_url("postgres")
    api = replicas.start(url, *API_ONLY)  # no worker anywhere: the ticks stay queued
    async with stubs_on(api) as (a,):
        job = await a.create_job(PARENT, "noop")
        schedule = schedule_pb2.Schedule(job=job.name, trigger={"cron": {"expression": "* * * * *"}})
        schedule.arguments.update({"pad": "x" * 16 * 1024})
        request = schedule_service_pb2.CreateScheduleRequest(
            parent=PARENT, schedule_id="every-minute", schedule=schedule
        )
        created = (await a.schedules.CreateSchedule(request)).schedule
        bookmark = (await a.numbered(2))[-1].sequence
        watcher = Watcher(a.events, after_sequence=bookmark)
        backfill = schedule_service_pb2.BackfillScheduleRequest(name=created.name, max_concurrency=1)
        backfill.start_time.FromJsonString("2026-01-01T00:00:00Z")
        backfill.end_time.FromJsonString("2026-01-01T05:00:00Z")
        ticks = (await a.schedules.BackfillSchedule(backfill)).executions
        assert len(ticks) == 300  # ~300 events of ~16 KiB: ~5 MiB committed at once
        final = bookmark + len(ticks)
        await eventually(
            lambda: watcher.ended or watcher.last_sequence >= final,
            WITHIN,
            f"sequence {final} on the watcher",
        )
        assert watcher.error is None, (
            f"the watcher was cut off after {len(watcher.events)} events: {watcher.error}"
        )
        assert watcher.sequences() == list(range(bookmark + 1, final + 1))
        await watcher.stop()
