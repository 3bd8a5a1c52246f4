"""Reads with statistics cost one statement, and the statistics (counters the database keeps as
executions change) match the executions there are: both seen by a caller, over a real channel to
an in-process server."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from alembic import command
from google.protobuf import timestamp_pb2
from sqlalchemy.pool import NullPool

from cronwire.v1 import (
    execution_pb2,
    execution_service_pb2,
    job_pb2,
    job_service_pb2,
    schedule_pb2,
    schedule_service_pb2,
)
from cronwire.v1.execution_service_pb2_grpc import ExecutionServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from cronwire_server.app import RunningServer, create_server
from cronwire_server.auth.keys import Role
from cronwire_server.auth.manage import KeyManager
from cronwire_server.auth.principal import OPEN
from cronwire_server.config import Settings
from cronwire_server.core.model import (
    DependencyCondition,
    ExecutionState,
    ExecutionStats,
    IntervalSpec,
    Job,
    JobDependent,
    OverlapPolicy,
    Page,
    RetentionPolicy,
    RetryPolicy,
    Schedule,
)
from cronwire_server.dispatcher import Dispatcher
from cronwire_server.executors.runtime import RunOutcome
from cronwire_server.storage.base import ClaimedExecution, ExecutionFilter
from cronwire_server.storage.migrate import alembic_config, upgrade_async
from cronwire_server.storage.sql_keys import KeyStore
from cronwire_server.storage.sql_store import SqlStore, create_engine, open_store, sync_url
from cronwire_server.storage.tables import schedules as schedules_table
from cronwire_server.workers import plan_retry
from tests.support import eventually
from tests.support import statements_sent as counting

NS = "stats"
PARENT = f"namespaces/{NS}"
LEASE = timedelta(seconds=60)
# Durations kept for a job's or schedule's median (migration 0011).
WINDOW = 100
# Statements of a call are counted this many times; the fewest is the call's own (the server's
# background loops share the engine and may add theirs to any one call).
TRIES = 5


async def _server(database_url: str, **settings: Any) -> RunningServer:
    # API only: the test drives dispatching, claiming, finishing and lease recovery itself.
    return await create_server(
        Settings(listen="127.0.0.1:0", database_url=database_url, roles=frozenset({"api"}), **settings)
    )


async def fewest_statements(store: SqlStore, call: Callable[[], Any]) -> int:
    fewest = None
    for _ in range(TRIES):
        with counting(store) as sent:
            await call()
        fewest = len(sent) if fewest is None else min(fewest, len(sent))
    assert fewest is not None
    return fewest


@pytest.mark.postgres
async def test_get_job_schedule_and_execution_are_one_statement_each(
    fresh_database_url: Callable[[str], str],
) -> None:
    url = fresh_database_url("postgres")
    engine = create_engine(url, pool_size=1)
    try:
        token = (await KeyManager(KeyStore(engine)).create(Role.ADMIN, ["*"], "reads", caller=OPEN))[1]
    finally:
        await engine.dispose()
    running = await _server(url, require_auth=True, rate_limit_per_key=0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            auth = (("authorization", f"Bearer {token}"),)
            jobs, schedules = JobServiceStub(channel), ScheduleServiceStub(channel)
            executions = ExecutionServiceStub(channel)
            job = await _create_job(jobs, "read", metadata=auth)
            schedule = await _create_schedule(schedules, job, "hourly", metadata=auth)
            run = await jobs.RunJob(job_service_pb2.RunJobRequest(name=job), metadata=auth)
            store = running.store
            assert isinstance(store, SqlStore)

            async def get_job() -> None:
                got = await jobs.GetJob(job_service_pb2.GetJobRequest(name=job), metadata=auth)
                assert got.job.stats.total == 1
                assert got.job.stats.next_run_time.seconds > 0

            async def get_schedule() -> None:
                request = schedule_service_pb2.GetScheduleRequest(name=schedule)
                got = await schedules.GetSchedule(request, metadata=auth)
                assert got.schedule.stats.next_run_time == got.schedule.next_fire_time

            async def get_execution() -> None:
                request = execution_service_pb2.GetExecutionRequest(name=run.execution.name)
                got = await executions.GetExecution(request, metadata=auth)
                assert got.execution.state == execution_pb2.EXECUTION_STATE_QUEUED

            for call in (get_job, get_schedule, get_execution):
                await call()  # warm-up: the key is read once, then cached
            assert await fewest_statements(store, get_job) == 1
            assert await fewest_statements(store, get_schedule) == 1
            assert await fewest_statements(store, get_execution) == 1
    finally:
        await running.stop(grace=0)


async def _create_job(jobs: JobServiceStub, job_id: str, metadata: Any = (), **fields: Any) -> str:
    request = job_service_pb2.CreateJobRequest(
        parent=PARENT, job_id=job_id, job=job_pb2.Job(executor="noop", **fields)
    )
    return (await jobs.CreateJob(request, metadata=metadata)).job.name


async def _create_schedule(
    schedules: ScheduleServiceStub, job: str, schedule_id: str, metadata: Any = (), cron: str = "0 * * * *"
) -> str:
    schedule = schedule_pb2.Schedule(job=job, trigger={"cron": {"expression": cron}})
    request = schedule_service_pb2.CreateScheduleRequest(
        parent=PARENT, schedule_id=schedule_id, schedule=schedule
    )
    return (await schedules.CreateSchedule(request, metadata=metadata)).schedule.name


# The counters against the executions


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[RunningServer]:
    running = await _server(database_url)
    yield running
    await running.stop(grace=0)


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


async def _claim(
    store: SqlStore, count: int, worker: str = "host:1:w", lease: timedelta = LEASE
) -> list[ClaimedExecution]:
    claimed = await store.claim_executions(worker, 100, lease)
    assert len(claimed) == count, [c.execution for c in claimed]
    return sorted(claimed, key=lambda c: c.execution.id)


async def _finish(store: SqlStore, claimed: list[ClaimedExecution], *states: ExecutionState) -> None:
    items = [(c, RunOutcome(state)) for c, state in zip(claimed, states, strict=True)]
    ended = await store.finish_executions(items, claimed[0].execution.worker, plan_retry)
    assert all(ended)


async def _make_due(store: SqlStore, schedule_id: str, ago: timedelta) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.update(schedules_table)
            .where(schedules_table.c.id == schedule_id)
            .values(next_fire_time=datetime.now(UTC) - ago)
        )


async def _executions_of(executions: ExecutionServiceStub, **where: str) -> list[execution_pb2.Execution]:
    found: list[execution_pb2.Execution] = []
    token = ""
    while True:
        request = execution_service_pb2.ListExecutionsRequest(
            parent=PARENT, page_size=100, page_token=token, **where
        )
        response = await executions.ListExecutions(request)
        found += response.executions
        token = response.next_page_token
        if not token:
            return found


FAILED_STATES = (ExecutionState.FAILED, ExecutionState.TIMED_OUT, ExecutionState.LOST)
FAILED = {
    execution_pb2.EXECUTION_STATE_FAILED,
    execution_pb2.EXECUTION_STATE_TIMED_OUT,
    execution_pb2.EXECUTION_STATE_LOST,
}


def _expected(found: list[execution_pb2.Execution]) -> dict[str, Any]:
    """The statistics of these executions, computed from them."""
    started = [e for e in found if e.HasField("start_time")]
    last = max(started, key=lambda e: (e.start_time.ToDatetime(), e.name), default=None)
    durations = [
        e.end_time.ToDatetime() - e.start_time.ToDatetime() for e in started if e.HasField("end_time")
    ]
    return {
        "total": len(found),
        "succeeded": sum(e.state == execution_pb2.EXECUTION_STATE_SUCCEEDED for e in found),
        "failed": sum(e.state in FAILED for e in found),
        "last_run_time": last.start_time if last else timestamp_pb2.Timestamp(),
        "last_run_state": last.state if last else execution_pb2.EXECUTION_STATE_UNSPECIFIED,
        "p50": statistics.median_low(durations) if durations else timedelta(0),
    }


def _seen(stats: execution_pb2.ExecutionStats) -> dict[str, Any]:
    return {
        "total": stats.total,
        "succeeded": stats.succeeded,
        "failed": stats.failed,
        "last_run_time": stats.last_run_time,
        "last_run_state": stats.last_run_state,
        "p50": stats.p50_duration.ToTimedelta(),
    }


async def test_counters_match_the_executions_whatever_changed_them(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    store = server.store
    assert isinstance(store, SqlStore)
    jobs, schedules = JobServiceStub(channel), ScheduleServiceStub(channel)
    executions = ExecutionServiceStub(channel)
    after = await _create_job(jobs, "after")
    flaky = await _create_job(
        jobs,
        "flaky",
        retry_policy={"max_attempts": 2, "initial_backoff": {"nanos": 1000}},
        dependents=[{"job": after, "condition": job_pb2.DEPENDENCY_CONDITION_ON_SUCCESS}],
    )
    main = await _create_job(jobs, "main")
    schedule = await _create_schedule(schedules, main, "ticks", cron="* * * * *")

    # Run now: succeeded, failed, timed out; one cancelled while queued, one while running.
    ran = [(await jobs.RunJob(job_service_pb2.RunJobRequest(name=main))).execution for _ in range(4)]
    await executions.CancelExecution(execution_service_pb2.CancelExecutionRequest(name=ran[3].name))
    claimed = await _claim(store, 3)
    cancel = execution_service_pb2.CancelExecutionRequest(name=claimed[2].execution.name)
    await executions.CancelExecution(cancel)
    await _finish(store, claimed[:1], ExecutionState.SUCCEEDED)
    await _finish(store, claimed[1:], ExecutionState.TIMED_OUT, ExecutionState.CANCELLED)

    # A failure retried in the finishing transaction, then its success queues the dependent.
    await jobs.RunJob(job_service_pb2.RunJobRequest(name=flaky))
    await _finish(store, await _claim(store, 1), ExecutionState.FAILED)
    await eventually(lambda: queued_due(store), 5, "the retry to be queued")
    retry = await eventually(lambda: store.claim_executions("host:1:w", 100, LEASE), 5, "the retry to be due")
    await _finish(store, retry, ExecutionState.SUCCEEDED)
    await _finish(store, await _claim(store, 1), ExecutionState.SUCCEEDED)  # the dependent

    # The schedule: a tick queued, the next skipped (overlap SKIP), the first lost by its worker.
    await _make_due(store, "ticks", timedelta(seconds=2))
    assert await Dispatcher(store).run_once() == 1
    await _make_due(store, "ticks", timedelta(seconds=1))
    assert await Dispatcher(store).run_once() == 0
    await _claim(store, 1, worker="host:2:gone", lease=timedelta(milliseconds=50))
    await eventually(lambda: store.recover_expired(plan_retry, limit=10), 5, "the lease to be recovered")
    # A backfill of two ticks.
    minute = int(datetime.now(UTC).timestamp()) // 60 * 60
    bf = await schedules.BackfillSchedule(
        schedule_service_pb2.BackfillScheduleRequest(
            name=schedule,
            start_time=timestamp_pb2.Timestamp(seconds=minute - 600),
            end_time=timestamp_pb2.Timestamp(seconds=minute - 481),
            overlap_policy=schedule_pb2.OVERLAP_POLICY_ALLOW_ALL,
            max_concurrency=2,
        )
    )
    assert len(bf.executions) == 2
    await _finish(store, await _claim(store, 2), ExecutionState.SUCCEEDED, ExecutionState.FAILED)
    await schedules.PauseSchedule(schedule_service_pb2.PauseScheduleRequest(name=schedule))

    states = {e.state for e in await _executions_of(executions)}
    assert {
        execution_pb2.EXECUTION_STATE_SUCCEEDED,
        execution_pb2.EXECUTION_STATE_FAILED,
        execution_pb2.EXECUTION_STATE_TIMED_OUT,
        execution_pb2.EXECUTION_STATE_CANCELLED,
        execution_pb2.EXECUTION_STATE_SKIPPED,
        execution_pb2.EXECUTION_STATE_LOST,
    } <= states

    listed_jobs = {
        j.name: j for j in (await jobs.ListJobs(job_service_pb2.ListJobsRequest(parent=PARENT))).jobs
    }
    listed_schedules = {
        s.name: s
        for s in (
            await schedules.ListSchedules(schedule_service_pb2.ListSchedulesRequest(parent=PARENT))
        ).schedules
    }
    for job in (main, flaky, after):
        expected = _expected(await _executions_of(executions, job=job))
        got = (await jobs.GetJob(job_service_pb2.GetJobRequest(name=job))).job
        assert _seen(got.stats) == expected, job
        assert _seen(listed_jobs[job].stats) == expected, job
        assert not got.stats.HasField("next_run_time")  # its schedule is paused
    expected = _expected(await _executions_of(executions, schedule=schedule))
    assert expected["total"] >= 4  # a tick, the skipped one(s), the backfill
    got_schedule = (
        await schedules.GetSchedule(schedule_service_pb2.GetScheduleRequest(name=schedule))
    ).schedule
    assert _seen(got_schedule.stats) == expected
    assert _seen(listed_schedules[schedule].stats) == expected

    # Lifetime counts: retention deleting executions leaves them.
    before = (await jobs.GetJob(job_service_pb2.GetJobRequest(name=main))).job.stats
    assert await store.prune_executions(RetentionPolicy(count=1), limit=1000) > 0
    assert len(await _executions_of(executions, job=main)) < before.total
    assert (await jobs.GetJob(job_service_pb2.GetJobRequest(name=main))).job.stats == before


# The migration that made the counters


def _downgrade(url: str, revision: str) -> None:
    engine = sa.create_engine(sync_url(url), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), revision)
    finally:
        engine.dispose()


async def test_the_migration_counts_the_executions_made_before_it(database_url: str) -> None:
    # Rows made by today's store, then the schema taken back to before the counters (the rows stay).
    store = await open_store(database_url)
    try:
        await store.create_job(Job(namespace=NS, id="old", executor="noop", parameters={}))
        await store.create_job(Job(namespace=NS, id="idle", executor="noop", parameters={}))
        await store.create_schedule(
            Schedule(namespace=NS, id="tick", job_id="old", trigger=IntervalSpec(timedelta(hours=1)))
        )
        await _make_due(store, "tick", timedelta(seconds=1))
        assert await Dispatcher(store).run_once() == 1
        for _ in range(3):
            await store.run_job(NS, "old", {})
        claimed = await _claim(store, 4)
        await _finish(
            store, claimed[:3], ExecutionState.SUCCEEDED, ExecutionState.FAILED, ExecutionState.LOST
        )
        _downgrade(database_url, "0010")
        await upgrade_async(database_url)

        async def check() -> None:
            listed = (await store.list_executions(NS, Page(size=100), ExecutionFilter(job_id="old"))).items
            started = [e for e in listed if e.start_time is not None]
            last = max(started, key=lambda e: (e.start_time, e.id))
            durations = sorted(e.end_time - e.start_time for e in started if e.end_time and e.start_time)
            stats = (await store.get_job(NS, "old", with_stats=True)).stats
            assert stats == ExecutionStats(
                total=len(listed),
                succeeded=sum(e.state is ExecutionState.SUCCEEDED for e in listed),
                failed=sum(e.state in FAILED_STATES for e in listed),
                last_run_time=last.start_time,
                last_run_state=last.state,
                next_run_time=(await store.get_schedule(NS, "tick")).next_fire_time,
                p50_duration=durations[(len(durations) - 1) // 2],
            )

        await check()
        assert (await store.get_job(NS, "idle", with_stats=True)).stats == ExecutionStats()
        ticks = (await store.list_executions(NS, Page(size=100), ExecutionFilter(schedule_id="tick"))).items
        schedule_stats = (await store.get_schedule(NS, "tick", with_stats=True)).stats
        assert schedule_stats is not None
        assert (schedule_stats.total, schedule_stats.succeeded) == (len(ticks), 1)
        # The triggers count from there on.
        await _finish(store, claimed[3:], ExecutionState.SUCCEEDED)
        await store.run_job(NS, "old", {})
        await check()
    finally:
        await store.close()


# Replicas changing executions at once


async def _stats_from_executions(store: SqlStore, **where: str) -> ExecutionStats:
    listed = (await store.list_executions(NS, Page(size=1000), ExecutionFilter(**where))).items
    started = [e for e in listed if e.start_time is not None]
    last = max(started, key=lambda e: (e.start_time, e.id), default=None)
    ended = sorted(
        (e for e in started if e.end_time and e.start_time), key=lambda e: (e.end_time, e.id), reverse=True
    )
    durations = sorted(e.end_time - e.start_time for e in ended[:WINDOW] if e.end_time and e.start_time)
    return ExecutionStats(
        total=len(listed),
        succeeded=sum(e.state is ExecutionState.SUCCEEDED for e in listed),
        failed=sum(e.state in FAILED_STATES for e in listed),
        last_run_time=last.start_time if last else None,
        last_run_state=last.state if last else None,
        p50_duration=durations[(len(durations) - 1) // 2] if durations else None,
    )


@pytest.mark.postgres
async def test_counters_stay_exact_while_replicas_change_executions_at_once(
    fresh_database_url: Callable[[str], str],
) -> None:
    """Two stores (two replicas) dispatch, claim, finish (with retries and dependents of other
    jobs in the finishing transactions), cancel and recover at once: no transaction deadlocks on
    the counters, and they end equal to what the executions say."""
    url = fresh_database_url("postgres")
    replicas = [await open_store(url), await open_store(url)]
    first = replicas[0]
    try:
        count = 4
        for n in range(count):
            dependents = (
                [JobDependent(f"j{n + 1}", DependencyCondition.ON_COMPLETION)] if n + 1 < count else []
            )
            retry = RetryPolicy(max_attempts=2, initial_backoff=timedelta(milliseconds=1))
            job = Job(NS, f"j{n}", "noop", {}, retry_policy=retry, dependents=dependents)
            await first.create_job(job)
            schedule = Schedule(NS, f"s{n}", f"j{n}", IntervalSpec(timedelta(hours=1)))
            await first.create_schedule(dataclasses.replace(schedule, overlap_policy=OverlapPolicy.ALLOW_ALL))
        outcomes = [ExecutionState.SUCCEEDED, ExecutionState.FAILED, ExecutionState.CANCELLED]

        async def replica(store: SqlStore, index: int, rounds: int) -> None:
            worker = f"host:{index}:w"
            for round_ in range(rounds):
                await store.run_job(NS, f"j{round_ % count}", {})
                if round_ % 3 == index:
                    await _make_due(store, f"s{round_ % count}", timedelta(milliseconds=10 + round_))
                    await Dispatcher(store).run_once()
                claimed = await store.claim_executions(worker, 8, LEASE)
                if claimed and round_ % 4 == 0:
                    await store.cancel_execution(NS, claimed[0].execution.id, "test")
                items = [(c, RunOutcome(outcomes[(i + round_) % 3])) for i, c in enumerate(claimed)]
                if items:
                    await store.finish_executions(items, worker, plan_retry)
                if round_ % 5 == index:
                    await store.claim_executions(f"host:{index}:gone", 1, timedelta(milliseconds=1))
                    await store.recover_expired(plan_retry, limit=10)

        # Rounds few enough that no job or schedule ends more runs than the median's window
        # (WINDOW): past it, which runs are the latest depends on the order concurrent
        # transactions commit in, which the executions do not record.
        await asyncio.gather(*(replica(store, i, 20) for i, store in enumerate(replicas)))

        async def drained() -> bool:
            await first.recover_expired(plan_retry, limit=100)
            claimed = await first.claim_executions("host:0:w", 100, LEASE)
            if claimed:
                items = [(c, RunOutcome(ExecutionState.SUCCEEDED)) for c in claimed]
                await first.finish_executions(items, "host:0:w", plan_retry)
            active = (ExecutionState.QUEUED, ExecutionState.RUNNING)
            left = await first.list_executions(NS, Page(size=1), ExecutionFilter(states=active))
            return not left.items

        await eventually(drained, 10, "every execution to end")
        ended = await first.list_executions(NS, Page(size=1000), ExecutionFilter())
        per_job = Counter(e.job_id for e in ended.items if e.start_time and e.end_time)
        assert max(per_job.values()) <= WINDOW, per_job
        for n in range(count):
            job_stats = (await first.get_job(NS, f"j{n}", with_stats=True)).stats
            assert job_stats is not None
            expected = await _stats_from_executions(first, job_id=f"j{n}")
            assert dataclasses.replace(job_stats, next_run_time=None) == expected, n
            schedule_stats = (await first.get_schedule(NS, f"s{n}", with_stats=True)).stats
            assert schedule_stats is not None
            expected = await _stats_from_executions(first, schedule_id=f"s{n}")
            assert dataclasses.replace(schedule_stats, next_run_time=None) == expected, n
    finally:
        for store in replicas:
            await store.close()


async def queued_due(store: SqlStore) -> datetime | None:
    """When the earliest QUEUED execution is due; None while none is queued."""
    due, _ = await store.next_due_time()
    return due
