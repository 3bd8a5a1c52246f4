"""The synchronous Client against a real in-process server over a real channel."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest

import cronwire
from cronwire import (
    AnyOfTrigger,
    CronTrigger,
    DateTrigger,
    EventType,
    ExecutionState,
    ExecutionTrigger,
    IntervalTrigger,
    JobDependent,
    MisfirePolicy,
    OverlapPolicy,
    RetryPolicy,
)
from tests.support import wait_for

WAIT = 30.0  # upper bound of every wait for an execution; they end in well under a second


def test_job_lifecycle_on_each_backend(backend_target: str) -> None:
    with cronwire.Client(backend_target, namespace="crud") as client:
        created = client.create_job(
            "backup",
            executor="shell",
            parameters={"argv": ["echo", "hello"]},
            description="nightly dump",
            timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(max_attempts=3, initial_backoff=timedelta(seconds=30)),
            max_concurrency=2,
            dependents=["report", JobDependent("alert", cronwire.DependencyCondition.ON_FAILURE)],
            labels={"team": "data"},
        )
        assert created.name == "namespaces/crud/jobs/backup"
        assert (created.id, created.namespace) == ("backup", "crud")
        assert created.timeout == timedelta(minutes=10)
        assert created.retry_policy is not None
        assert created.retry_policy.max_attempts == 3
        assert created.retry_policy.initial_backoff == timedelta(seconds=30)
        assert [(d.job, d.condition) for d in created.dependents] == [
            ("namespaces/crud/jobs/report", cronwire.DependencyCondition.ON_SUCCESS),
            ("namespaces/crud/jobs/alert", cronwire.DependencyCondition.ON_FAILURE),
        ]
        assert created.create_time is not None
        assert created.create_time.tzinfo is not None
        assert created.etag

        fetched = client.get_job("backup")
        assert fetched.parameters == {"argv": ["echo", "hello"]}
        assert client.get_job("namespaces/crud/jobs/backup").etag == created.etag

        # Only the fields given change; None clears one.
        updated = client.update_job(fetched, description="changed", timeout=None)
        assert updated.description == "changed"
        assert updated.timeout is None
        assert updated.parameters == {"argv": ["echo", "hello"]}
        assert updated.labels == {"team": "data"}
        assert updated.etag != created.etag

        # The etag of a Job passed in guards the update.
        with pytest.raises(cronwire.Conflict) as stale:
            client.update_job(fetched, description="lost update")
        assert stale.value.code is grpc.StatusCode.ABORTED
        assert stale.value.reason == "ETAG_MISMATCH"

        client.delete_job(updated)
        with pytest.raises(cronwire.NotFound) as missing:
            client.get_job("backup")
        assert missing.value.reason == "JOB_NOT_FOUND"
        assert "namespaces/crud/jobs/backup" in missing.value.message


def test_update_needs_a_field(client: cronwire.Client) -> None:
    with pytest.raises(ValueError, match="nothing to update"):
        client.update_job("backup")


def test_errors_are_typed_with_reason_and_field_violations(client: cronwire.Client) -> None:
    client.create_job("dup", executor="noop")
    with pytest.raises(cronwire.AlreadyExists) as exists:
        client.create_job("dup", executor="noop")
    assert exists.value.reason == "JOB_ALREADY_EXISTS"

    with pytest.raises(cronwire.InvalidArgument) as invalid:
        client.create_job("Bad", executor="shell", parameters={}, timeout=timedelta(seconds=-1))
    error = invalid.value
    assert isinstance(error, cronwire.CronwireError)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_ARGUMENT"
    assert [v.field for v in error.field_violations] == ["job_id"]
    field, description = error.field_violations[0]
    assert field == "job_id"
    assert "not a valid id" in description

    with pytest.raises(cronwire.InvalidArgument) as bad_cron:
        client.create_schedule("s", job="dup", trigger=CronTrigger("0 25 * * *"))
    assert [v.field for v in bad_cron.value.field_violations] == ["schedule.trigger.cron.expression"]


def test_request_id_makes_creates_and_runs_idempotent(client: cronwire.Client) -> None:
    first = client.create_job("once", executor="noop", request_id="create-once")
    again = client.create_job("once", executor="noop", request_id="create-once")
    assert again.name == first.name
    run = client.run_job("once", request_id="run-1")
    assert client.run_job("once", request_id="run-1").name == run.name


def test_list_pages_and_iter(client: cronwire.Client) -> None:
    for index in range(5):
        client.create_job(f"job-{index}", executor="noop")
    client.create_job("other", executor="noop", namespace="elsewhere")

    first = client.list_jobs(page_size=2)
    assert [j.id for j in first] == ["job-0", "job-1"]
    assert len(first) == 2
    assert first.next_page_token
    second = client.list_jobs(page_size=2, page_token=first.next_page_token)
    assert [j.id for j in second.items] == ["job-2", "job-3"]

    assert [j.id for j in client.iter_jobs(page_size=2)] == [f"job-{i}" for i in range(5)]
    assert [j.name for j in client.iter_jobs(namespace="elsewhere")] == ["namespaces/elsewhere/jobs/other"]
    assert list(client.iter_jobs(executor="shell")) == []

    with pytest.raises(cronwire.InvalidArgument) as negative:
        client.list_jobs(page_size=-1)
    assert negative.value.field_violations[0].field == "page_size"


def test_job_types(client: cronwire.Client) -> None:
    types = {t.name: t for t in client.list_job_types()}
    assert {"shell", "noop"} <= set(types)
    shell = types["shell"]
    assert shell.parameters_schema["type"] == "object"
    assert "argv" in shell.example


def test_run_waits_for_the_end(client: cronwire.Client) -> None:
    client.create_job("hello", executor="shell", parameters={"argv": ["echo", "hello"]})
    execution = client.run("hello", wait_timeout=WAIT)
    assert execution.state is ExecutionState.SUCCEEDED
    assert execution.succeeded
    assert execution.ended
    assert execution.exit_code == 0
    assert execution.output == "hello\n"
    assert execution.trigger is ExecutionTrigger.RUN_NOW
    assert execution.duration is not None
    assert execution.duration >= timedelta(0)

    client.create_job("fails", executor="shell", parameters={"argv": ["false"]})
    failed = client.run("fails", wait_timeout=WAIT)
    assert failed.state is ExecutionState.FAILED
    assert failed.exit_code == 1

    queued = client.run("hello", wait=False)
    assert queued.state in (ExecutionState.QUEUED, ExecutionState.RUNNING)
    assert client.wait_for_execution(queued.id, wait_timeout=WAIT).succeeded


def test_run_follows_retries_to_the_last_attempt(client: cronwire.Client) -> None:
    client.create_job(
        "flaky",
        executor="shell",
        parameters={"argv": ["false"]},
        retry_policy=RetryPolicy(
            max_attempts=2,
            initial_backoff=timedelta(milliseconds=100),
            max_backoff=timedelta(milliseconds=100),
        ),
    )
    last = client.run("flaky", poll_interval=0.05, wait_timeout=WAIT)
    assert last.state is ExecutionState.FAILED
    assert last.attempt == 2
    assert last.trigger is ExecutionTrigger.RETRY
    assert last.first_attempt

    first_only = client.run("flaky", follow_retries=False, poll_interval=0.05, wait_timeout=WAIT)
    assert first_only.attempt == 1


def test_wait_timeout_raises_deadline_exceeded(client: cronwire.Client) -> None:
    client.create_job("slow", executor="noop", parameters={"sleep_seconds": 30})
    with pytest.raises(cronwire.DeadlineExceeded) as waited:
        client.run("slow", poll_interval=0.05, wait_timeout=0.3)
    assert waited.value.reason == "WAIT_TIMEOUT"
    assert "still" in waited.value.message


def test_cancel_and_list_executions(client: cronwire.Client) -> None:
    client.create_job("slow", executor="noop", parameters={"sleep_seconds": 30})
    client.create_job("quick", executor="noop")
    done = client.run("quick", wait_timeout=WAIT)
    running = client.run("slow", wait=False)
    cancelled = client.cancel_execution(running, reason="not today")
    assert cancelled.state in (ExecutionState.CANCELLED, ExecutionState.RUNNING)
    ended = client.wait_for_execution(running, wait_timeout=WAIT)
    assert ended.state is ExecutionState.CANCELLED

    names = [e.name for e in client.iter_executions()]
    assert names == [running.name, done.name]  # newest first
    assert [e.name for e in client.iter_executions(job="quick")] == [done.name]
    only_cancelled = client.list_executions(states=[ExecutionState.CANCELLED])
    assert [e.name for e in only_cancelled] == [running.name]
    later = client.list_executions(start_time=datetime.now(UTC) + timedelta(hours=1))
    assert later.items == []


def test_schedule_lifecycle(client: cronwire.Client) -> None:
    client.create_job("backup", executor="noop")
    schedule = client.create_schedule(
        "nightly",
        job="backup",
        trigger=CronTrigger("0 3 * * *"),
        time_zone="Europe/Berlin",
        jitter=timedelta(seconds=5),
        misfire_policy=MisfirePolicy.SKIP,
        overlap_policy=OverlapPolicy.QUEUE_ONE,
        arguments={"full": True, "level": 3},
    )
    assert schedule.name == "namespaces/test/schedules/nightly"
    assert schedule.job == "namespaces/test/jobs/backup"
    assert schedule.trigger == CronTrigger("0 3 * * *")
    assert schedule.misfire_policy is MisfirePolicy.SKIP
    assert schedule.overlap_policy is OverlapPolicy.QUEUE_ONE
    assert schedule.arguments == {"full": True, "level": 3}
    assert schedule.next_fire_time is not None
    assert schedule.next_fire_time.astimezone(UTC).minute == 0

    combined = AnyOfTrigger(
        [IntervalTrigger(timedelta(minutes=5)), DateTrigger(datetime(2030, 1, 1, tzinfo=UTC))]
    )
    other = client.create_schedule("often", job="namespaces/test/jobs/backup", trigger=combined)
    assert other.trigger == combined
    assert [s.id for s in client.iter_schedules(job="backup")] == ["nightly", "often"]

    updated = client.update_schedule(schedule, trigger=IntervalTrigger(timedelta(hours=1)), jitter=None)
    assert updated.trigger == IntervalTrigger(timedelta(hours=1))
    assert updated.jitter is None
    assert updated.time_zone == "Europe/Berlin"

    paused = client.pause_schedule("nightly", reason="maintenance")
    assert paused.paused
    assert paused.pause_reason == "maintenance"
    assert paused.next_fire_time is None
    resumed = client.resume_schedule("nightly")
    assert not resumed.paused
    assert resumed.next_fire_time is not None

    with pytest.raises(cronwire.Conflict):
        client.delete_schedule(schedule)  # its etag is stale
    client.delete_schedule("nightly")
    with pytest.raises(cronwire.NotFound) as missing:
        client.get_schedule("nightly")
    assert missing.value.reason == "SCHEDULE_NOT_FOUND"
    with pytest.raises(cronwire.NotFound):
        client.create_schedule("orphan", job="nope", trigger=CronTrigger("* * * * *"))


def test_preview_across_a_dst_change(client: cronwire.Client) -> None:
    preview = client.preview_schedule(
        trigger=CronTrigger("0 9 * * 1-5"),
        time_zone="Europe/Berlin",
        after_time=datetime(2027, 3, 24, tzinfo=UTC),
        count=5,
    )
    assert preview.time_zone == "Europe/Berlin"
    assert [t.fire_time.hour for t in preview.fire_times] == [8, 8, 8, 7, 7]
    assert all(t.local_time.hour == 9 for t in preview.fire_times)
    assert preview.fire_times[3].local_time.utcoffset() == timedelta(hours=2)

    client.create_job("j", executor="noop")
    client.create_schedule("every-hour", job="j", trigger=IntervalTrigger(timedelta(hours=1)))
    stored = client.preview_schedule("every-hour", count=3)
    assert len(stored.fire_times) == 3
    gaps = {b.fire_time - a.fire_time for a, b in zip(stored.fire_times, stored.fire_times[1:], strict=False)}
    assert gaps == {timedelta(hours=1)}


def test_naive_datetimes_are_refused(client: cronwire.Client) -> None:
    with pytest.raises(ValueError, match="no time zone"):
        DateTrigger(datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="no time zone"):
        client.list_executions(start_time=datetime(2030, 1, 1))


def _all_events(client: cronwire.Client, count: int) -> list[cronwire.Event] | None:
    events = list(client.iter_events(page_size=1))
    return events if len(events) >= count else None


def _latest_sequence(client: cronwire.Client) -> int:
    """The sequence of the newest event, once there is one (0 would mean "from now on")."""

    def latest() -> int:
        return max((e.sequence for e in client.iter_events(namespace="-", page_size=1000)), default=0)

    return wait_for(latest, WAIT, "a first event")


def test_list_events(client: cronwire.Client) -> None:
    client.create_job("hello", executor="noop")
    client.create_schedule("s", job="hello", trigger=CronTrigger("0 * * * *"))
    client.pause_schedule("s")
    # Events are numbered just after their commit: wait until the last one is listed.
    events = wait_for(lambda: _all_events(client, 3), WAIT, "three events")
    assert [e.type for e in events] == [
        EventType.JOB_CREATED,
        EventType.SCHEDULE_CREATED,
        EventType.SCHEDULE_PAUSED,
    ]
    assert [e.sequence for e in events] == sorted({e.sequence for e in events})
    created = events[0]
    assert created.resource == "namespaces/test/jobs/hello"
    assert created.namespace == "test"
    assert created.job_snapshot is not None
    assert created.job_snapshot.executor == "noop"
    assert created.time is not None
    assert events[2].schedule_snapshot is not None
    assert events[2].schedule_snapshot.paused

    page = client.list_events(page_size=2)
    assert len(page) == 2
    assert page.next_page_token
    only = client.list_events(event_types=[EventType.SCHEDULE_PAUSED], schedule="s")
    assert [e.type for e in only] == [EventType.SCHEDULE_PAUSED]
    after = client.list_events(after_sequence=events[1].sequence)
    assert [e.sequence for e in after] == [events[2].sequence]
    assert list(client.iter_events(namespace="elsewhere")) == []


def test_watch_replays_after_a_sequence(client: cronwire.Client) -> None:
    client.create_job("hello", executor="shell", parameters={"argv": ["echo", "hi"]})
    start = _latest_sequence(client)
    execution = client.run("hello", wait_timeout=WAIT)
    seen = []
    types = [EventType.EXECUTION_QUEUED, EventType.EXECUTION_STARTED, EventType.EXECUTION_SUCCEEDED]
    for event in client.watch(after_sequence=start, job="hello", event_types=types):
        seen.append(event)
        if event.type is EventType.EXECUTION_SUCCEEDED:
            break
    assert [e.type for e in seen] == [
        EventType.EXECUTION_QUEUED,
        EventType.EXECUTION_STARTED,
        EventType.EXECUTION_SUCCEEDED,
    ]
    assert {e.execution.name for e in seen if e.execution is not None} == {execution.name}
    assert [e.sequence for e in seen] == sorted({e.sequence for e in seen})
    assert seen[-1].execution is not None
    assert seen[-1].execution.state is ExecutionState.SUCCEEDED


def test_logs_stream_the_output(client: cronwire.Client) -> None:
    client.create_job("hello", executor="shell", parameters={"argv": ["echo", "hello"]})
    execution = client.run("hello", wait_timeout=WAIT)
    chunks = list(client.logs(execution, follow=True))
    assert "".join(c.data for c in chunks) == "hello\n"
    assert chunks[-1].final_state is ExecutionState.SUCCEEDED
    rest = list(client.logs(execution.name, follow=False, offset=3))
    assert "".join(c.data for c in rest) == "lo\n"


def test_backfill(client: cronwire.Client) -> None:
    client.create_job("j", executor="noop")
    client.create_schedule("hourly", job="j", trigger=CronTrigger("0 * * * *"))
    end = (datetime.now(UTC) - timedelta(hours=1)).replace(minute=30, second=0, microsecond=0)
    dry = client.backfill_schedule("hourly", start_time=end - timedelta(hours=3), end_time=end, dry_run=True)
    assert [t.fire_time.minute for t in dry.fire_times] == [0, 0, 0]
    assert dry.executions == []
    done = client.backfill_schedule("hourly", start_time=end - timedelta(hours=3), end_time=end)
    assert len(done.executions) == 3
    ended = [client.wait_for_execution(name, wait_timeout=WAIT) for name in done.executions]
    assert {e.trigger for e in ended} == {ExecutionTrigger.BACKFILL}
    assert all(e.succeeded for e in ended)


def test_unavailable_server_raises_unavailable(unused_port: int) -> None:
    with cronwire.Client(f"127.0.0.1:{unused_port}", timeout=5) as client:
        with pytest.raises(cronwire.Unavailable):
            client.get_job("x")  # a read: retried, then given up
        with pytest.raises(cronwire.Unavailable):
            client.create_job("x", executor="noop")


@pytest.fixture
def unused_port() -> Iterator[int]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
