"""EventService over a real channel to an in-process server, on each backend: the events of
every kind of change with their snapshots, ListEvents paging, errors, retention and bookmarks."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
from google.protobuf import json_format

from cronwire.v1 import (
    event_pb2,
    event_service_pb2,
    execution_pb2,
    execution_service_pb2,
    job_pb2,
    job_service_pb2,
    schedule_pb2,
    schedule_service_pb2,
)
from cronwire.v1.event_service_pb2_grpc import EventServiceStub
from cronwire.v1.execution_service_pb2_grpc import ExecutionServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from cronwire_server.app import RunningServer
from cronwire_server.core.model import EventType
from cronwire_server.events import DEFAULT_RETENTION, Pruner
from cronwire_server.storage import sql_events
from cronwire_server.storage.sql_store import SqlStore
from tests.integration.api.test_execution_service import ENDED, eventually, wait_state
from tests.integration.api.test_job_service import expect_error
from tests.support import status_details

PARENT = "namespaces/evs"
E = event_pb2
Event = event_pb2.Event
SECRET = "s3cret-do-not-leak"


def names(events: list[Event]) -> list[str]:
    return [E.EventType.Name(e.type) for e in events]  # type: ignore[arg-type]


async def listed(events: EventServiceStub, **fields: Any) -> list[Event]:
    """Every retained event matching `fields`, page by page."""
    found: list[Event] = []
    token = ""
    while True:
        request = event_service_pb2.ListEventsRequest(page_size=1000, page_token=token, **fields)
        response = await events.ListEvents(request)
        found.extend(response.events)
        token = response.next_page_token
        if not token:
            return found


async def numbered(events: EventServiceStub, count: int, within: float = 15, **fields: Any) -> list[Event]:
    """The events matching `fields` once at least `count` are numbered (the sequencer numbers
    committed events a moment after their commit)."""

    async def enough() -> list[Event] | None:
        found = await listed(events, **fields)
        return found if len(found) >= count else None

    return await eventually(enough, within, f"{count} numbered events matching {fields}")


async def create_job(jobs: JobServiceStub, job_id: str, parent: str = PARENT, **fields: Any) -> job_pb2.Job:
    job = json_format.ParseDict({"executor": "noop", **fields}, job_pb2.Job())
    request = job_service_pb2.CreateJobRequest(parent=parent, job_id=job_id, job=job)
    return (await jobs.CreateJob(request)).job


async def create_schedule(
    schedules: ScheduleServiceStub, schedule_id: str, job: str, **fields: Any
) -> schedule_pb2.Schedule:
    schedule = json_format.ParseDict(
        {"job": job, "trigger": {"cron": {"expression": "0 3 * * *"}}, **fields}, schedule_pb2.Schedule()
    )
    request = schedule_service_pb2.CreateScheduleRequest(
        parent=PARENT, schedule_id=schedule_id, schedule=schedule
    )
    return (await schedules.CreateSchedule(request)).schedule


async def run(jobs: JobServiceStub, job: str, **fields: Any) -> str:
    request = json_format.ParseDict({"name": job, **fields}, job_service_pb2.RunJobRequest())
    return str((await jobs.RunJob(request)).execution.name)


def assert_secret_hidden(job: job_pb2.Job) -> None:
    assert job.callback.url
    assert job.callback.secret == ""
    assert job.callback.secret_set
    assert SECRET not in str(job)


async def test_job_and_schedule_changes_are_events_with_snapshots(
    jobs: JobServiceStub, schedules: ScheduleServiceStub, events: EventServiceStub
) -> None:
    before = await create_job(jobs, "before", parent="namespaces/elsewhere")
    bookmark = (await numbered(events, 1))[-1].sequence
    watch = events.WatchEvents(event_service_pb2.WatchEventsRequest(after_sequence=bookmark))

    callback = {"url": "https://hooks.example.com/done", "secret": SECRET}
    job = await create_job(jobs, "etl", description="v1", callback=callback)
    change = job_pb2.Job(name=job.name, description="v2")
    await jobs.UpdateJob(job_service_pb2.UpdateJobRequest(job=change))
    schedule = await create_schedule(schedules, "nightly", job.name)
    change_schedule = schedule_pb2.Schedule(name=schedule.name, description="at three")
    await schedules.UpdateSchedule(schedule_service_pb2.UpdateScheduleRequest(schedule=change_schedule))
    await schedules.PauseSchedule(schedule_service_pb2.PauseScheduleRequest(name=schedule.name))
    await schedules.ResumeSchedule(schedule_service_pb2.ResumeScheduleRequest(name=schedule.name))
    await schedules.DeleteSchedule(schedule_service_pb2.DeleteScheduleRequest(name=schedule.name))

    found = await numbered(events, 7, parent=PARENT)
    assert names(found) == [
        "EVENT_TYPE_JOB_CREATED",
        "EVENT_TYPE_JOB_UPDATED",
        "EVENT_TYPE_SCHEDULE_CREATED",
        "EVENT_TYPE_SCHEDULE_UPDATED",
        "EVENT_TYPE_SCHEDULE_PAUSED",
        "EVENT_TYPE_SCHEDULE_RESUMED",
        "EVENT_TYPE_SCHEDULE_DELETED",
    ]
    assert [e.sequence for e in found] == list(range(bookmark + 1, bookmark + 8))
    for event in found:
        assert event.namespace == "evs"
        assert event.job == job.name
        assert event.actor == ""  # auth is off
        assert event.HasField("time")
    created, updated = found[0], found[1]
    for event in (created, updated):
        assert event.resource == job.name
        assert event.schedule == ""
        assert event.WhichOneof("snapshot") == "job_snapshot"
        assert_secret_hidden(event.job_snapshot)
    assert created.job_snapshot.description == "v1"
    assert updated.job_snapshot.description == "v2"
    for event in found[2:]:
        assert event.resource == schedule.name
        assert event.schedule == schedule.name
        assert event.WhichOneof("snapshot") == "schedule_snapshot"
        assert event.schedule_snapshot.name == schedule.name
    assert found[3].schedule_snapshot.description == "at three"
    assert found[4].schedule_snapshot.paused
    assert not found[5].schedule_snapshot.paused
    assert found[6].schedule_snapshot.description == "at three"  # as it was right before
    assert before.name not in {e.job for e in found}

    # The stream replays and then follows the same events.
    streamed: list[Event] = []
    while len(streamed) < 7:
        response = await asyncio.wait_for(watch.read(), 15)
        assert isinstance(response, event_service_pb2.WatchEventsResponse)
        streamed.extend(response.events)
    watch.cancel()
    assert streamed == found


async def test_deleting_a_job_deletes_its_schedules_each_with_its_event(
    jobs: JobServiceStub, schedules: ScheduleServiceStub, events: EventServiceStub
) -> None:
    job = await create_job(jobs, "doomed", callback={"url": "https://hooks.example.com/x", "secret": SECRET})
    made = [await create_schedule(schedules, s, job.name) for s in ("first", "second")]
    await jobs.DeleteJob(job_service_pb2.DeleteJobRequest(name=job.name))
    found = await numbered(events, 6, parent=PARENT)
    assert names(found) == [
        "EVENT_TYPE_JOB_CREATED",
        "EVENT_TYPE_SCHEDULE_CREATED",
        "EVENT_TYPE_SCHEDULE_CREATED",
        "EVENT_TYPE_SCHEDULE_DELETED",
        "EVENT_TYPE_SCHEDULE_DELETED",
        "EVENT_TYPE_JOB_DELETED",
    ]
    deleted = found[3:5]
    assert sorted(e.schedule for e in deleted) == sorted(s.name for s in made)
    assert sorted(e.schedule_snapshot.name for e in deleted) == sorted(s.name for s in made)
    assert all(e.job == job.name for e in deleted)
    gone = found[5]
    assert gone.resource == job.name
    assert gone.WhichOneof("snapshot") == "job_snapshot"
    assert gone.job_snapshot.name == job.name
    assert_secret_hidden(gone.job_snapshot)
    # One transaction: the cascade and the job's own event are consecutive.
    assert [e.sequence for e in found[3:]] == [found[3].sequence + n for n in range(3)]


async def execution_events(events: EventServiceStub, execution: str, count: int) -> list[Event]:
    async def enough() -> list[Event] | None:
        found = [e for e in await listed(events, parent=PARENT) if e.resource == execution]
        return found if len(found) >= count else None

    return await eventually(enough, 20, f"{count} events of {execution}")


async def test_every_run_is_told_by_its_execution_events(
    jobs: JobServiceStub,
    schedules: ScheduleServiceStub,
    executions: ExecutionServiceStub,
    events: EventServiceStub,
) -> None:
    noop = await create_job(jobs, "noop")
    ok = await run(jobs, noop.name)
    loud = await create_job(
        jobs, "loud", executor="shell", parameters={"argv": ["sh", "-c", "echo secret-output; exit 3"]}
    )
    failing = await run(jobs, loud.name)
    slow = await create_job(jobs, "slow", executor="shell", parameters={"argv": ["sleep", "30"]})
    cancelled = await run(jobs, slow.name)
    await wait_state(executions, cancelled, {execution_pb2.EXECUTION_STATE_RUNNING})
    await executions.CancelExecution(
        execution_service_pb2.CancelExecutionRequest(name=cancelled, reason="enough")
    )

    happy = await execution_events(events, ok, 3)
    assert names(happy) == [
        "EVENT_TYPE_EXECUTION_QUEUED",
        "EVENT_TYPE_EXECUTION_STARTED",
        "EVENT_TYPE_EXECUTION_SUCCEEDED",
    ]
    states = [e.execution.state for e in happy]
    assert states == [
        execution_pb2.EXECUTION_STATE_QUEUED,
        execution_pb2.EXECUTION_STATE_RUNNING,
        execution_pb2.EXECUTION_STATE_SUCCEEDED,
    ]
    assert all(e.WhichOneof("snapshot") == "execution" and e.execution.name == ok for e in happy)
    assert all(e.job == noop.name and e.schedule == "" for e in happy)
    assert happy[0].execution.worker == ""
    assert happy[1].execution.worker
    assert happy[2].execution.HasField("end_time")

    sad = await execution_events(events, failing, 3)
    assert names(sad)[-1] == "EVENT_TYPE_EXECUTION_FAILED"
    assert sad[-1].execution.exit_code == 3
    assert sad[-1].execution.error == "exit code 3"
    assert sad[-1].execution.output == ""  # snapshots leave out the output
    got = await executions.GetExecution(execution_service_pb2.GetExecutionRequest(name=failing))
    assert got.execution.output == "secret-output\n"

    stopped = await execution_events(events, cancelled, 3)
    assert names(stopped) == [
        "EVENT_TYPE_EXECUTION_QUEUED",
        "EVENT_TYPE_EXECUTION_STARTED",
        "EVENT_TYPE_EXECUTION_CANCELLED",
    ]
    assert stopped[-1].execution.state == execution_pb2.EXECUTION_STATE_CANCELLED

    # A tick that comes while the previous run of its schedule still runs is skipped.
    schedule = await create_schedule(
        schedules,
        "every-second",
        slow.name,
        trigger={"cron": {"expression": "* * * * * *"}},
        overlapPolicy="OVERLAP_POLICY_SKIP",
    )

    async def a_skip() -> list[Event] | None:
        found = await listed(events, schedule=schedule.name, event_types=[E.EVENT_TYPE_EXECUTION_SKIPPED])
        return found or None

    skipped = (await eventually(a_skip, 20, "a skipped tick"))[0]
    await schedules.PauseSchedule(schedule_service_pb2.PauseScheduleRequest(name=schedule.name))
    assert skipped.execution.state == execution_pb2.EXECUTION_STATE_SKIPPED
    assert skipped.execution.skip_reason == execution_pb2.SKIP_REASON_OVERLAP
    assert skipped.schedule == schedule.name
    assert skipped.job == slow.name
    listing = await executions.ListExecutions(
        execution_service_pb2.ListExecutionsRequest(parent=PARENT, schedule=schedule.name)
    )
    for execution in listing.executions:
        if execution.state not in ENDED | {execution_pb2.EXECUTION_STATE_SKIPPED}:
            await executions.CancelExecution(
                execution_service_pb2.CancelExecutionRequest(name=execution.name)
            )


async def test_a_retried_attempt_is_told_by_a_retrying_event_and_watchers_go_on(
    jobs: JobServiceStub, events: EventServiceStub
) -> None:
    await create_job(jobs, "first")
    bookmark = (await numbered(events, 1))[-1].sequence
    watch = events.WatchEvents(event_service_pb2.WatchEventsRequest(after_sequence=bookmark))
    flaky = await create_job(
        jobs,
        "flaky",
        executor="shell",
        parameters={"argv": ["false"]},
        retryPolicy={"maxAttempts": 2, "initialBackoff": "0.1s"},
    )
    first = await run(jobs, flaky.name)

    async def both_attempts_failed() -> list[Event] | None:
        found = await listed(events, job=flaky.name)
        return found if names(found).count("EVENT_TYPE_EXECUTION_FAILED") == 2 else None

    found = [e for e in await eventually(both_attempts_failed, 20, "two failed attempts") if e.execution.name]
    assert names(found) == [
        "EVENT_TYPE_EXECUTION_QUEUED",
        "EVENT_TYPE_EXECUTION_STARTED",
        "EVENT_TYPE_EXECUTION_FAILED",
        "EVENT_TYPE_EXECUTION_RETRYING",
        "EVENT_TYPE_EXECUTION_QUEUED",
        "EVENT_TYPE_EXECUTION_STARTED",
        "EVENT_TYPE_EXECUTION_FAILED",
    ]
    retrying = found[3]
    assert retrying.resource == first
    assert retrying.execution.attempt == 1
    assert found[4].execution.attempt == 2
    assert found[4].execution.first_attempt == first

    # The stream follows on past the retry.
    after = await create_job(jobs, "after")
    streamed: list[Event] = []

    async def the_job_after() -> bool:
        response = await asyncio.wait_for(watch.read(), 15)
        assert isinstance(response, event_service_pb2.WatchEventsResponse)
        streamed.extend(response.events)
        return any(e.resource == after.name for e in streamed)

    await eventually(the_job_after, 20, "the stream to go on past the retry")
    watch.cancel()


async def test_list_events_pages_through_everything_once(
    jobs: JobServiceStub, events: EventServiceStub
) -> None:
    for n in range(25):
        await create_job(jobs, f"job-{n:02d}")
    everything = await numbered(events, 25)
    pages: list[list[Event]] = []
    token = ""
    while True:
        response = await events.ListEvents(
            event_service_pb2.ListEventsRequest(parent=PARENT, page_size=10, page_token=token)
        )
        pages.append(list(response.events))
        token = response.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [e for page in pages for e in page] == everything
    default = await events.ListEvents(event_service_pb2.ListEventsRequest())
    assert list(default.events) == everything
    assert default.next_page_token == ""
    after = await events.ListEvents(
        event_service_pb2.ListEventsRequest(after_sequence=everything[19].sequence)
    )
    assert list(after.events) == everything[20:]

    violations, _ = await expect_error(
        events.ListEvents(event_service_pb2.ListEventsRequest(page_size=-1)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "page_size" in violations
    first = await events.ListEvents(event_service_pb2.ListEventsRequest(page_size=10))
    other_filter = event_service_pb2.ListEventsRequest(
        page_size=10, page_token=first.next_page_token, event_types=[E.EVENT_TYPE_JOB_DELETED]
    )
    violations, _ = await expect_error(events.ListEvents(other_filter), grpc.StatusCode.INVALID_ARGUMENT)
    assert "page_token" in violations
    violations, _ = await expect_error(
        events.ListEvents(event_service_pb2.ListEventsRequest(after_sequence=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "after_sequence" in violations


async def test_bad_filters_are_invalid_arguments_naming_the_field(events: EventServiceStub) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"event_types": [99]}, "event_types[0]"),
        ({"event_types": [E.EVENT_TYPE_JOB_CREATED, E.EVENT_TYPE_UNSPECIFIED]}, "event_types[1]"),
        ({"parent": "evs"}, "parent"),
        ({"job": "jobs/x"}, "job"),
        ({"parent": PARENT, "schedule": "namespaces/other/schedules/s"}, "schedule"),
    ]
    for fields, field in cases:
        violations, _ = await expect_error(
            events.ListEvents(event_service_pb2.ListEventsRequest(**fields)), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert field in violations, (fields, violations)
        watch = events.WatchEvents(event_service_pb2.WatchEventsRequest(**fields))
        violations, _ = await expect_error(watch.read(), grpc.StatusCode.INVALID_ARGUMENT)
        assert field in violations, (fields, violations)


def store_of(server: RunningServer) -> SqlStore:
    return cast(SqlStore, server.store)


async def test_resuming_before_the_oldest_retained_event_is_out_of_range(
    server: RunningServer, jobs: JobServiceStub, events: EventServiceStub
) -> None:
    for n in range(3):
        await create_job(jobs, f"job-{n}")
    one, two, three = await numbered(events, 3)
    # Prune as the server would, a retention after the third event: the first two go.
    cutoff = three.time.ToDatetime(tzinfo=UTC) + DEFAULT_RETENTION
    assert await Pruner(server.store).prune_once(cutoff) == 2
    assert await listed(events) == [three]

    watch = events.WatchEvents(event_service_pb2.WatchEventsRequest(after_sequence=one.sequence))
    with_error = await expect_error(watch.read(), grpc.StatusCode.OUT_OF_RANGE)
    assert with_error[1] == "EVENTS_PRUNED"
    # Right before the oldest retained event is fine: nothing was missed.
    watch = events.WatchEvents(event_service_pb2.WatchEventsRequest(after_sequence=two.sequence))
    response = await asyncio.wait_for(watch.read(), 15)
    assert isinstance(response, event_service_pb2.WatchEventsResponse)
    assert list(response.events) == [three]
    watch.cancel()


async def test_sequences_keep_growing_after_every_event_was_pruned(
    server: RunningServer, jobs: JobServiceStub, events: EventServiceStub
) -> None:
    for n in range(3):
        await create_job(jobs, f"job-{n}")
    old = await numbered(events, 3)
    watch = events.WatchEvents(event_service_pb2.WatchEventsRequest(after_sequence=old[-1].sequence))
    far = datetime.now(UTC) + timedelta(days=3650)
    # The newest event stays (numbering continues from it): the two before it go.
    assert await Pruner(server.store).prune_once(far) == 2

    await create_job(jobs, "after-the-prune")
    new = (await numbered(events, 2))[-1]
    assert new.sequence > old[-1].sequence, f"sequence {new.sequence} again after {old[-1].sequence}"
    response = await asyncio.wait_for(watch.read(), 5)
    assert isinstance(response, event_service_pb2.WatchEventsResponse)
    assert [e.resource for e in response.events] == [f"{PARENT}/jobs/after-the-prune"]
    watch.cancel()


async def test_resuming_after_every_event_was_pruned_is_out_of_range(
    server: RunningServer, jobs: JobServiceStub, events: EventServiceStub
) -> None:
    for n in range(3):
        await create_job(jobs, f"job-{n}")
    first = (await numbered(events, 3))[0]
    assert await Pruner(server.store).prune_once(datetime.now(UTC) + timedelta(days=3650)) == 2
    watch = events.WatchEvents(event_service_pb2.WatchEventsRequest(after_sequence=first.sequence))
    # Events 2 and 3 are gone: a watcher that had only 1 must be told, not left waiting.
    outcome = await first_outcome(watch, 3)
    watch.cancel()
    assert outcome is not None, (
        f"after_sequence={first.sequence} with events up to {first.sequence + 2} pruned: "
        "the stream stays open and silent instead of failing with OUT_OF_RANGE"
    )
    assert isinstance(outcome, grpc.aio.AioRpcError), f"expected OUT_OF_RANGE, got {outcome}"
    assert outcome.code() == grpc.StatusCode.OUT_OF_RANGE, outcome
    assert status_details(outcome)[1] == "EVENTS_PRUNED"


async def first_outcome(watch: Any, within: float) -> object:
    """The first response of a stream, or the error that ended it; None when nothing came."""
    try:
        return await asyncio.wait_for(watch.read(), within)
    except grpc.aio.AioRpcError as error:
        return error
    except TimeoutError:
        return None


async def insert_events(server: RunningServer, count: int) -> None:
    """`count` events written as the server writes them (unnumbered; its sequencer numbers them)."""
    now = datetime.now(UTC)
    rows = [
        sql_events.row(EventType.JOB_UPDATED, "bulk", "namespaces/bulk/jobs/many", now, job_id="many")
        for _ in range(count)
    ]
    async with store_of(server).engine.begin() as conn:
        await conn.run_sync(sql_events.insert, rows)


async def test_a_replay_bookmark_never_skips_what_is_still_to_be_sent(
    server: RunningServer, jobs: JobServiceStub, events: EventServiceStub
) -> None:
    await create_job(jobs, "first")
    bookmark = (await numbered(events, 1))[-1].sequence
    await insert_events(server, 1500)  # more than one replay batch
    everything = await numbered(events, 1501)
    watch = events.WatchEvents(event_service_pb2.WatchEventsRequest(after_sequence=bookmark))
    received: list[Event] = []
    while len(received) < 1500:
        response = await asyncio.wait_for(watch.read(), 15)
        assert isinstance(response, event_service_pb2.WatchEventsResponse)
        received.extend(response.events)
        # "events up to it that match the filters have been sent": resuming from it misses nothing.
        unsent = [e.sequence for e in everything[1:] if e.sequence > received[-1].sequence]
        assert not unsent or response.latest_sequence < unsent[0], (
            f"a response ending at {received[-1].sequence} carries bookmark {response.latest_sequence}; "
            f"resuming from it would skip {unsent[0]}..{min(response.latest_sequence, unsent[-1])}"
        )
    watch.cancel()
    assert received == everything[1:]


async def test_events_with_large_snapshots_reach_a_default_client(
    jobs: JobServiceStub, events: EventServiceStub
) -> None:
    job = await create_job(jobs, "big")
    bookmark = (await numbered(events, 1))[-1].sequence
    # 10 KiB of arguments per run: 450 events of ~10.5 KiB, ~4.7 MiB (a client takes 4 MiB a message).
    arguments = {"payload": "x" * 10 * 1024}
    gate = asyncio.Semaphore(16)

    async def one() -> str:
        async with gate:
            return await run(jobs, job.name, arguments=arguments)

    runs = await asyncio.gather(*(one() for _ in range(150)))
    # Only the SUCCEEDED events (~1.6 MiB): the whole history is what is under test below.
    await numbered(events, len(runs), within=60, job=job.name, event_types=[E.EVENT_TYPE_EXECUTION_SUCCEEDED])
    everything = [bookmark + 1 + n for n in range(3 * len(runs))]

    watch = events.WatchEvents(event_service_pb2.WatchEventsRequest(after_sequence=bookmark))
    received: list[int] = []
    while len(received) < len(everything):
        response = await asyncio.wait_for(watch.read(), 15)
        assert isinstance(response, event_service_pb2.WatchEventsResponse)
        received.extend(e.sequence for e in response.events)
    watch.cancel()
    assert received == everything

    # A page may hold fewer than page_size events (AIP-158), never more than a client takes.
    listed_sequences: list[int] = []
    token = ""
    while True:
        request = event_service_pb2.ListEventsRequest(
            after_sequence=bookmark, page_size=1000, page_token=token
        )
        response = await events.ListEvents(request)
        listed_sequences.extend(e.sequence for e in response.events)
        token = response.next_page_token
        if not token:
            break
    assert listed_sequences == everything
