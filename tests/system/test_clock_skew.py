"""A replica whose clock runs an hour fast or slow stores what any other replica would: every
time it stores or decides by is the database's, and its log says its clock is off.

The skewed replica runs under libfaketime (LD_PRELOAD), which shifts the wall clock of the
process and of everything it starts; the database and these tests keep the true time.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf import field_mask_pb2, json_format, timestamp_pb2
from sqlalchemy.engine import make_url

from cronwire.v1 import (
    event_pb2,
    event_service_pb2,
    execution_pb2,
    job_service_pb2,
    schedule_pb2,
    schedule_service_pb2,
)
from cronwire.v1.event_service_pb2_grpc import EventServiceStub
from tests.support import ServerProcess, start_server, wait_for
from tests.system.helpers import (
    PARENT,
    RPC_TIMEOUT,
    Api,
    Execution,
    Replicas,
    describe,
    seconds,
    utc,
)

pytestmark = pytest.mark.postgres

SKEWS = {"+1h": timedelta(hours=1), "-1h": timedelta(hours=-1)}
# How far a stored time may be from the database's clock read around the call that stored it.
SLACK = timedelta(seconds=1)
INTERVAL = timedelta(seconds=2)
NEW_INTERVAL = timedelta(seconds=3)
# The skewed replica dispatches; a tick recorded later than this after its time was missed.
GRACE = timedelta(seconds=1)
# A schedule of a few seconds runs within this, not an hour later.
FIRST_RUN_WITHIN = 15.0
SUCCEEDED = execution_pb2.EXECUTION_STATE_SUCCEEDED
SKIPPED = execution_pb2.EXECUTION_STATE_SKIPPED
EventType = event_pb2.EventType


def faketime_library() -> Path:
    spec = importlib.util.find_spec("libfaketime")
    assert spec is not None, "pip install libfaketime (the dev extra)"
    assert spec.origin is not None
    found = sorted(Path(spec.origin).parent.rglob("libfaketime.so.1"))
    assert found, "the libfaketime package ships no built libfaketime.so.1"
    return found[0]


def start_skewed(replicas: Replicas, url: str, workdir: Path, skew: str) -> ServerProcess:
    """A replica whose wall clock is `skew` off (its monotonic clock is left alone)."""
    env = {
        "LD_PRELOAD": str(faketime_library()),
        "FAKETIME": skew,
        "DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }
    flags = ("--log-format", "json", "--misfire-grace-seconds", f"{GRACE.total_seconds():g}")
    server = start_server(url, workdir, *flags, env=env)
    replicas.started.append(server)  # stopped, and its log shown, with the others
    return server


def database_now(url: str) -> datetime:
    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    value: datetime = row[0]
    return value.astimezone(UTC)


def assert_sees_skew(server: ServerProcess, skew: timedelta) -> None:
    """The faked replica really lives `skew` away: the time on its first log line says so."""
    first = wait_for(lambda: server.log().splitlines()[:1], 10, "the skewed replica's first log line")
    logged = datetime.fromisoformat(json.loads(first[0])["time"])
    off_by = logged - datetime.now(UTC)
    assert abs(off_by - skew) < timedelta(minutes=1), f"the replica's clock is {off_by} off, not {skew}"


def assert_warns_of_skew(server: ServerProcess, skew: timedelta) -> None:
    direction = "ahead of" if skew > timedelta(0) else "behind"

    def warned() -> bool:
        for line in server.log().splitlines():
            entry = json.loads(line)
            if entry["level"] == "WARNING" and f"s {direction} the database's" in entry["message"]:
                assert "3600" in entry["message"], entry["message"]
                return True
        return False

    wait_for(warned, 10, f"a warning that the replica's clock is {direction} the database's")


def assert_between(what: str, moment: datetime, before: datetime, after: datetime) -> None:
    """`moment` is a time the database stored between `before` and `after` by its clock."""
    assert before - SLACK <= moment <= after + SLACK, (
        f"{what} is {moment.isoformat()}, but the call ran from {before.isoformat()} "
        f"to {after.isoformat()} by the database's clock"
    )


def id_time(execution_name: str) -> datetime:
    """The time part of an execution id: 12 hex digits of milliseconds since the epoch."""
    execution_id = execution_name.rsplit("/", 1)[1]
    return datetime.fromtimestamp(int(execution_id[:12], 16) / 1000, UTC)


def event_of(api: Api, resource: str, event_type: event_pb2.EventType.ValueType) -> event_pb2.Event:
    """The (numbered) event of `event_type` about job or schedule `resource`."""
    events = EventServiceStub(api.channel)
    request = event_service_pb2.ListEventsRequest(parent=PARENT, page_size=1000, event_types=[event_type])
    if "/schedules/" in resource:
        request.schedule = resource
    else:
        request.job = resource

    def find() -> event_pb2.Event | None:
        listed = events.ListEvents(request, timeout=RPC_TIMEOUT).events
        found = [e for e in listed if e.resource == resource]
        return found[-1] if found else None

    return wait_for(find, 10, f"the {EventType.Name(event_type)} event of {resource}")


def first_run_after(api: Api, schedule: str, after: datetime) -> Callable[[], list[Execution] | None]:
    """For wait_for: the schedule's executions once a tick at or after `after` has succeeded."""

    def check() -> list[Execution] | None:
        found = api.executions_of(schedule=schedule)
        ran = any(e.state == SUCCEEDED and utc(e.scheduled_time) >= after for e in found)
        return found if ran else None

    return check


def assert_none_before(executions: Sequence[Execution], created: datetime) -> None:
    early = [e for e in executions if utc(e.scheduled_time) < created - SLACK]
    assert not early, (
        f"{len(early)} executions for ticks before the schedule existed ({created.isoformat()}):\n"
        + describe(early[:10])
    )


def assert_ids_by_database_clock(executions: Sequence[Execution]) -> None:
    for execution in executions:
        assert abs(id_time(execution.name) - utc(execution.create_time)) <= SLACK, (
            f"{execution.name}: id time {id_time(execution.name).isoformat()}, "
            f"created {utc(execution.create_time).isoformat()}"
        )


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


@pytest.mark.parametrize("skew", list(SKEWS))
def test_a_skewed_replica_creates_by_the_database_clock(
    skew: str, fresh_database_url: Callable[[str], str], replicas: Replicas, tmp_path: Path
) -> None:
    url = fresh_database_url("postgres")
    server = start_skewed(replicas, url, tmp_path / "skewed", skew)
    assert_sees_skew(server, SKEWS[skew])
    api = replicas.api(server)

    before = database_now(url)
    job = api.create_job("beat", "noop")
    after = database_now(url)
    assert_between("the job's create time", utc(job.create_time), before, after)
    assert utc(job.update_time) == utc(job.create_time)
    assert_between(
        "its JOB_CREATED event",
        utc(event_of(api, job.name, event_pb2.EVENT_TYPE_JOB_CREATED).time),
        before,
        after,
    )

    before = database_now(url)
    job.description = "changed"
    request = job_service_pb2.UpdateJobRequest(
        job=job, update_mask=field_mask_pb2.FieldMask(paths=["description"])
    )
    updated = api.jobs.UpdateJob(request, timeout=RPC_TIMEOUT).job
    after = database_now(url)
    assert_between("the job's update time", utc(updated.update_time), before, after)
    assert_between(
        "its JOB_UPDATED event",
        utc(event_of(api, job.name, event_pb2.EVENT_TYPE_JOB_UPDATED).time),
        before,
        after,
    )

    before = database_now(url)
    schedule = api.create_schedule(
        "every-2s",
        job.name,
        trigger={"interval": {"every": seconds(INTERVAL)}},
        misfirePolicy="MISFIRE_POLICY_RUN_ALL",
    )
    after = database_now(url)
    created = utc(schedule.create_time)
    assert_between("the schedule's create time", created, before, after)
    assert_between("its first fire time", utc(schedule.next_fire_time), before, after + INTERVAL)
    assert_between(
        "its SCHEDULE_CREATED event",
        utc(event_of(api, schedule.name, event_pb2.EVENT_TYPE_SCHEDULE_CREATED).time),
        before,
        after,
    )

    # A preview starts from the database's now.
    before = database_now(url)
    preview = api.schedules.PreviewSchedule(
        schedule_service_pb2.PreviewScheduleRequest(name=schedule.name, count=1), timeout=RPC_TIMEOUT
    )
    after = database_now(url)
    assert_between("the first previewed time", utc(preview.fire_times[0].fire_time), before, after + INTERVAL)

    executions = wait_for(
        first_run_after(api, schedule.name, created), FIRST_RUN_WITHIN, "the schedule's first run"
    )
    assert_none_before(executions, created)
    assert_ids_by_database_clock(executions)

    before = database_now(url)
    run = api.run_job(job.name)
    after = database_now(url)
    assert_between("a run-now execution's create time", utc(run.create_time), before, after)
    assert_between("its id's time", id_time(run.name), before, after)

    # Backfill's "not in the future" is the database's future.
    now = database_now(url)
    past = schedule_service_pb2.BackfillScheduleRequest(
        name=schedule.name,
        start_time=timestamp(now - timedelta(minutes=1)),
        end_time=timestamp(now - SLACK),
        dry_run=True,
    )
    api.schedules.BackfillSchedule(past, timeout=RPC_TIMEOUT)  # accepted: it ends in the past
    future = schedule_service_pb2.BackfillScheduleRequest(
        name=schedule.name,
        start_time=timestamp(now - timedelta(seconds=10)),
        end_time=timestamp(now + timedelta(minutes=30)),
        dry_run=True,
    )
    with pytest.raises(grpc.RpcError) as refused:
        api.schedules.BackfillSchedule(future, timeout=RPC_TIMEOUT)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    assert_warns_of_skew(server, SKEWS[skew])


@pytest.mark.parametrize("skew", list(SKEWS))
def test_a_skewed_replica_updates_and_resumes_by_the_database_clock(
    skew: str, fresh_database_url: Callable[[str], str], replicas: Replicas, tmp_path: Path
) -> None:
    url = fresh_database_url("postgres")
    # The schedule is made by a replica with a right clock; the skewed one changes it, and is
    # the only one that dispatches.
    right = replicas.api(replicas.start(url, "--roles", "api"))
    server = start_skewed(replicas, url, tmp_path / "skewed", skew)
    assert_sees_skew(server, SKEWS[skew])
    api = replicas.api(server)
    job = right.create_job("beat", "noop")
    # Anchored two hours back: a first fire time computed from a clock an hour behind would
    # fall an hour before the schedule existed, and be a tick by the trigger's arithmetic.
    schedule = right.create_schedule(
        "every-2s",
        job.name,
        trigger={"interval": {"every": seconds(INTERVAL)}},
        startTime=json_format.MessageToJson(timestamp(database_now(url) - timedelta(hours=2))).strip('"'),
        misfirePolicy="MISFIRE_POLICY_SKIP",
    )
    created = utc(schedule.create_time)

    before = database_now(url)
    change = schedule_pb2.Schedule()
    change.CopyFrom(schedule)
    change.trigger.interval.every.FromTimedelta(NEW_INTERVAL)
    request = schedule_service_pb2.UpdateScheduleRequest(
        schedule=change, update_mask=field_mask_pb2.FieldMask(paths=["trigger"])
    )
    updated = api.schedules.UpdateSchedule(request, timeout=RPC_TIMEOUT).schedule
    after = database_now(url)
    assert_between("the schedule's update time", utc(updated.update_time), before, after)
    assert_between("its next fire time", utc(updated.next_fire_time), before, after + NEW_INTERVAL)
    assert_between(
        "its SCHEDULE_UPDATED event",
        utc(event_of(api, schedule.name, event_pb2.EVENT_TYPE_SCHEDULE_UPDATED).time),
        before,
        after,
    )

    executions = wait_for(
        first_run_after(api, schedule.name, before), FIRST_RUN_WITHIN, "a run after the update"
    )
    assert_none_before(executions, created)
    assert_ids_by_database_clock(executions)

    # Paused across two ticks: on resume the ticks missed meanwhile are skipped as fallen while
    # paused, which the resume time decides.
    paused = utc(api.pause(schedule.name).update_time)
    wait_for(lambda: database_now(url) > paused + 2 * NEW_INTERVAL + GRACE + SLACK, 30, "two ticks to pass")
    resumed = utc(api.resume(schedule.name).update_time)
    assert_between("the resume's update time", resumed, paused, database_now(url))
    executions = wait_for(
        first_run_after(api, schedule.name, resumed), FIRST_RUN_WITHIN, "a run after resuming"
    )
    missed = [
        e
        for e in executions
        if paused < utc(e.scheduled_time) < resumed and utc(e.create_time) - utc(e.scheduled_time) > GRACE
    ]
    assert missed, "no record of the ticks missed while paused:\n" + describe(executions)
    assert all(e.state == SKIPPED and e.skip_reason == execution_pb2.SKIP_REASON_PAUSED for e in missed), (
        describe(missed)
    )
    assert_none_before(executions, created)

    assert_warns_of_skew(server, SKEWS[skew])
