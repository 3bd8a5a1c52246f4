"""Creates that arrive together are committed together: 64 concurrent CreateJob calls over a real
channel cost at most 2 statements each, counted by a statement hook on the server's engine (every
statement sent, BEGIN and COMMIT included), not timed.

"Together" is made certain, not left to timing: another connection holds the table the first
batch writes until every other call waits behind it (on a quiet machine, calls otherwise arrive
one by one and batches stay small)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from cronwire.v1 import job_pb2, job_service_pb2
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire_server.app import create_server
from cronwire_server.config import Settings
from cronwire_server.storage.sql_creates import GroupCommit
from cronwire_server.storage.sql_store import SqlStore, create_engine
from tests.support import eventually
from tests.support import statements_sent as counting

CREATES = 64
NS = "batch"


@asynccontextmanager
async def held(url: str, table: str) -> AsyncIterator[None]:
    """`table` locked against writes by another connection until the block ends."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            # The store's engines autocommit; this one needs a transaction to hold the lock.
            await conn.execution_options(isolation_level="READ COMMITTED")
            async with conn.begin():
                await conn.exec_driver_sql(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")
                yield
    finally:
        await engine.dispose()


async def all_arrived(group: GroupCommit[Any, Any], count: int) -> None:
    """Until `count` calls are in `group`: the first batch (held) and the calls waiting behind it."""
    await eventually(lambda: group.pending >= count, 30, f"{count} calls to reach the group commit")


@pytest.mark.postgres
async def test_64_concurrent_creates_cost_at_most_2_statements_each(
    fresh_database_url: Callable[[str], str],
) -> None:
    url = fresh_database_url("postgres")
    # API only (no background loop shares the engine), with the default namespace quota on.
    running = await create_server(
        Settings(listen="127.0.0.1:0", database_url=url, roles=frozenset({"api"}), rate_limit_per_key=0)
    )
    try:
        store = running.store
        assert isinstance(store, SqlStore)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            jobs = JobServiceStub(channel)

            async def create(job_id: str) -> str:
                request = job_service_pb2.CreateJobRequest(
                    parent=f"namespaces/{NS}", job_id=job_id, job=job_pb2.Job(executor="noop")
                )
                return (await jobs.CreateJob(request)).job.name

            await create("warm-up")  # the channel and the server's first statements
            names = [f"job-{n}" for n in range(CREATES)]
            with counting(store) as sent:
                async with held(url, "namespace_usage"):
                    calls = asyncio.gather(*(create(n) for n in names))
                    await all_arrived(store._creates["job"], CREATES)
                created = await calls
            assert created == [f"namespaces/{NS}/jobs/{n}" for n in names]
            listed = await jobs.ListJobs(
                job_service_pb2.ListJobsRequest(parent=f"namespaces/{NS}", page_size=100)
            )
            assert len(listed.jobs) == CREATES + 1
            assert len(sent) <= 2 * CREATES, f"{len(sent)} statements for {CREATES} creates"
    finally:
        await running.stop(grace=0)


@pytest.mark.postgres
async def test_64_concurrent_runs_share_their_transactions(fresh_database_url: Callable[[str], str]) -> None:
    """RunJob calls that arrive together share a transaction (each alone was BEGIN, the clock, the
    job, the insert, NOTIFY, the event, COMMIT); each caller still gets its own execution, and a
    run of a missing job is NOT_FOUND alone."""
    url = fresh_database_url("postgres")
    running = await create_server(
        Settings(listen="127.0.0.1:0", database_url=url, roles=frozenset({"api"}), rate_limit_per_key=0)
    )
    try:
        store = running.store
        assert isinstance(store, SqlStore)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            jobs = JobServiceStub(channel)
            request = job_service_pb2.CreateJobRequest(
                parent=f"namespaces/{NS}", job_id="often", job=job_pb2.Job(executor="noop")
            )
            job = (await jobs.CreateJob(request)).job.name

            async def run(name: str) -> str:
                try:
                    return (await jobs.RunJob(job_service_pb2.RunJobRequest(name=name))).execution.name
                except grpc.aio.AioRpcError as error:
                    return error.code().name

            await run(job)  # warm-up
            names = [job] * CREATES + [f"namespaces/{NS}/jobs/missing"]
            with counting(store) as sent:
                async with held(url, "executions"):
                    calls = asyncio.gather(*(run(n) for n in names))
                    await all_arrived(store._runs, CREATES + 1)
                got = await calls
            assert got[-1] == "NOT_FOUND"
            assert len(set(got[:-1])) == CREATES
            assert all(g.startswith(f"{job.replace('/jobs/often', '')}/executions/") for g in got[:-1])
            assert len(sent) <= 3 * CREATES, f"{len(sent)} statements for {CREATES} runs"
    finally:
        await running.stop(grace=0)
