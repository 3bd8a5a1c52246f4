"""The namespace quota (--max-jobs-per-namespace, --max-schedules-per-namespace) is a count the
database keeps, exact under concurrent creates on several replicas, and freed by deletes; creates
committed together each get their own outcome. Seen by callers over real channels."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.pool import NullPool

from cronwire.v1 import job_pb2, job_service_pb2, schedule_pb2, schedule_service_pb2
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from cronwire_server.app import create_server
from cronwire_server.config import Settings
from cronwire_server.core.errors import AlreadyExists
from cronwire_server.core.model import IntervalSpec, Job, Schedule
from cronwire_server.limits import NamespaceFull
from cronwire_server.storage.migrate import alembic_config, upgrade_async
from cronwire_server.storage.sql_store import open_store, sync_url

NS = "quota"
PARENT = f"namespaces/{NS}"


@asynccontextmanager
async def replicas(url: str, count: int, **limits: Any) -> AsyncIterator[list[grpc.aio.Channel]]:
    """`count` API servers on one database, a channel to each."""
    async with AsyncExitStack() as stack:
        channels = []
        for _ in range(count):
            settings = Settings(listen="127.0.0.1:0", database_url=url, roles=frozenset({"api"}), **limits)
            running = await create_server(settings)
            stack.push_async_callback(running.stop, 0)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
            stack.push_async_callback(channel.close)
            channels.append(channel)
        yield channels


def job_request(job_id: str, *, request_id: str = "", **fields: Any) -> job_service_pb2.CreateJobRequest:
    return job_service_pb2.CreateJobRequest(
        parent=PARENT, job_id=job_id, job=job_pb2.Job(executor="noop", **fields), request_id=request_id
    )


def schedule_request(schedule_id: str, job: str) -> schedule_service_pb2.CreateScheduleRequest:
    schedule = schedule_pb2.Schedule(
        job=f"{PARENT}/jobs/{job}", trigger={"cron": {"expression": "0 * * * *"}}
    )
    return schedule_service_pb2.CreateScheduleRequest(
        parent=PARENT, schedule_id=schedule_id, schedule=schedule
    )


async def outcome(call: Any) -> str:
    """The name a create returned, or its status code's name."""
    try:
        response = await call
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return str((response.job if hasattr(response, "job") else response.schedule).name)


async def job_names(jobs: JobServiceStub) -> set[str]:
    listed = await jobs.ListJobs(job_service_pb2.ListJobsRequest(parent=PARENT, page_size=1000))
    return {j.name for j in listed.jobs}


@pytest.mark.postgres
async def test_concurrent_creates_at_the_limit_on_two_replicas_never_overshoot(
    fresh_database_url: Callable[[str], str],
) -> None:
    limit, racing = 10, 24
    async with replicas(fresh_database_url("postgres"), 2, max_jobs_per_namespace=limit) as channels:
        stubs = [JobServiceStub(c) for c in channels]
        for n in range(limit - 1):
            await stubs[0].CreateJob(job_request(f"early-{n}"))
        # One place left; creates race for it on both replicas at once.
        results = await asyncio.gather(
            *(outcome(stubs[n % 2].CreateJob(job_request(f"racer-{n}"))) for n in range(racing))
        )
        created = [r for r in results if r.startswith(PARENT)]
        assert len(created) == 1, results
        assert results.count("RESOURCE_EXHAUSTED") == racing - 1
        assert len(await job_names(stubs[1])) == limit


async def test_creates_committed_together_each_get_their_own_outcome(database_url: str) -> None:
    async with replicas(database_url, 1, max_jobs_per_namespace=6, max_schedules_per_namespace=2) as (
        channel,
    ):
        jobs, schedules = JobServiceStub(channel), ScheduleServiceStub(channel)
        await jobs.CreateJob(job_request("taken"))
        calls = {
            "taken": jobs.CreateJob(job_request("taken")),  # the id exists
            "twin-1": jobs.CreateJob(job_request("twin")),  # the same new id twice
            "twin-2": jobs.CreateJob(job_request("twin")),
            "retry-1": jobs.CreateJob(job_request("once", request_id="req-once")),  # a retry racing
            "retry-2": jobs.CreateJob(job_request("once", request_id="req-once")),
            "bad": jobs.CreateJob(job_request("bad", max_concurrency=-1)),
            "fine": jobs.CreateJob(job_request("fine")),
            "last": jobs.CreateJob(job_request("last")),
        }
        got = dict(zip(calls, await asyncio.gather(*(outcome(c) for c in calls.values())), strict=True))
        assert got["taken"] == "ALREADY_EXISTS"
        assert sorted([got["twin-1"], got["twin-2"]]) == ["ALREADY_EXISTS", f"{PARENT}/jobs/twin"]
        assert got["retry-1"] == got["retry-2"] == f"{PARENT}/jobs/once"
        assert got["bad"] == "INVALID_ARGUMENT"
        # taken, twin, once, fine: 4 of 6; then both of these fit.
        assert got["fine"] == f"{PARENT}/jobs/fine"
        assert got["last"] == f"{PARENT}/jobs/last"
        assert await job_names(jobs) == {
            f"{PARENT}/jobs/{n}" for n in ("taken", "twin", "once", "fine", "last")
        }
        # One place left: of two more, one gets it; a retry of a create that got in still gets it.
        more = await asyncio.gather(
            outcome(jobs.CreateJob(job_request("more-1"))),
            outcome(jobs.CreateJob(job_request("more-2"))),
            outcome(jobs.CreateJob(job_request("once", request_id="req-once"))),
        )
        assert sorted(more[:2]) in (
            ["RESOURCE_EXHAUSTED", f"{PARENT}/jobs/more-1"],
            ["RESOURCE_EXHAUSTED", f"{PARENT}/jobs/more-2"],
        ), more
        assert more[2] == f"{PARENT}/jobs/once"

        # Schedules: a missing job is NOT_FOUND for its create only; the quota counts the rest.
        got_schedules = await asyncio.gather(
            outcome(schedules.CreateSchedule(schedule_request("s1", "fine"))),
            outcome(schedules.CreateSchedule(schedule_request("orphan", "missing"))),
            outcome(schedules.CreateSchedule(schedule_request("s2", "fine"))),
            outcome(schedules.CreateSchedule(schedule_request("s3", "twin"))),
        )
        assert got_schedules[1] == "NOT_FOUND"
        racing = {"s1": got_schedules[0], "s2": got_schedules[2], "s3": got_schedules[3]}
        refused = [name for name, got in racing.items() if got == "RESOURCE_EXHAUSTED"]
        assert len(refused) == 1, racing
        assert all(got == f"{PARENT}/schedules/{name}" for name, got in racing.items() if name not in refused)


async def test_deletes_free_their_places(database_url: str) -> None:
    async with replicas(database_url, 1, max_jobs_per_namespace=2, max_schedules_per_namespace=2) as (
        channel,
    ):
        jobs, schedules = JobServiceStub(channel), ScheduleServiceStub(channel)
        for name in ("a", "b"):
            await jobs.CreateJob(job_request(name))
        await schedules.CreateSchedule(schedule_request("a1", "a"))
        await schedules.CreateSchedule(schedule_request("a2", "a"))
        assert await outcome(jobs.CreateJob(job_request("c"))) == "RESOURCE_EXHAUSTED"
        assert await outcome(schedules.CreateSchedule(schedule_request("b1", "b"))) == "RESOURCE_EXHAUSTED"
        # Deleting a job takes its schedules with it: a job's place and both schedules' are free.
        await jobs.DeleteJob(job_service_pb2.DeleteJobRequest(name=f"{PARENT}/jobs/a"))
        assert await outcome(jobs.CreateJob(job_request("c"))) == f"{PARENT}/jobs/c"
        assert await outcome(jobs.CreateJob(job_request("d"))) == "RESOURCE_EXHAUSTED"
        for name in ("b1", "b2"):
            assert (
                await outcome(schedules.CreateSchedule(schedule_request(name, "b")))
                == f"{PARENT}/schedules/{name}"
            )
        await schedules.DeleteSchedule(
            schedule_service_pb2.DeleteScheduleRequest(name=f"{PARENT}/schedules/b1")
        )
        assert (
            await outcome(schedules.CreateSchedule(schedule_request("c1", "c"))) == f"{PARENT}/schedules/c1"
        )
        assert await outcome(schedules.CreateSchedule(schedule_request("c2", "c"))) == "RESOURCE_EXHAUSTED"


def _downgrade(url: str, revision: str) -> None:
    engine = sa.create_engine(sync_url(url), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), revision)
    finally:
        engine.dispose()


async def test_the_migration_counts_what_namespaces_held_before_it(database_url: str) -> None:
    # Rows made by today's store, then the schema taken back to before the counters (the rows stay).
    store = await open_store(database_url)
    try:
        for n in range(3):
            await store.create_job(Job(namespace=NS, id=f"j{n}", executor="noop", parameters={}))
        await store.create_job(Job(namespace="other", id="j", executor="noop", parameters={}))
        every = IntervalSpec(timedelta(hours=1))
        await store.create_schedule(Schedule(namespace=NS, id="s", job_id="j0", trigger=every))
        _downgrade(database_url, "0012")
        await upgrade_async(database_url)
        with pytest.raises(NamespaceFull):
            await store.create_job(Job(namespace=NS, id="j3", executor="noop", parameters={}), limit=3)
        await store.create_job(Job(namespace=NS, id="j3", executor="noop", parameters={}), limit=4)
        await store.create_job(Job(namespace="other", id="k", executor="noop", parameters={}), limit=2)
        with pytest.raises(NamespaceFull):
            await store.create_schedule(Schedule(namespace=NS, id="t", job_id="j1", trigger=every), limit=1)
        with pytest.raises(AlreadyExists):
            await store.create_job(Job(namespace=NS, id="j3", executor="noop", parameters={}), limit=9)
    finally:
        await store.close()
