"""Primary-key reads that arrive together share one statement on PostgreSQL, and each caller
still gets its own row or its own NotFound; over a real channel, concurrent GetJob calls each
get their own job."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from cronwire.v1 import job_pb2, job_service_pb2
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire_server.app import create_server
from cronwire_server.config import Settings
from cronwire_server.core import errors
from cronwire_server.core.model import Job
from cronwire_server.storage.sql_store import SqlStore, open_store
from tests.support import eventually
from tests.support import statements_sent as counting

NS = "reads"


async def _get(store: SqlStore, namespace: str, job_id: str, with_stats: bool) -> str:
    try:
        job = await store.get_job(namespace, job_id, with_stats=with_stats)
    except errors.NotFound:
        return "missing"
    assert (job.stats is not None) is with_stats
    return f"{job.namespace}/{job.id}/{job.executor}"


async def test_reads_that_arrive_together_share_a_statement(store: SqlStore, backend: str) -> None:
    for i in range(40):
        await store.create_job(
            Job(namespace=NS, id=f"j{i}", executor="shell" if i % 2 else "noop", parameters={})
        )
    await store.create_job(Job(namespace="other", id="j1", executor="http", parameters={}))
    wanted = [(NS, f"j{i}") for i in range(40)] + [(NS, "j3"), ("other", "j1"), (NS, "nope"), ("none", "j1")]
    expected = [
        f"{ns}/{job_id}/{'http' if ns == 'other' else 'shell' if int(job_id[1:]) % 2 else 'noop'}"
        if ns in (NS, "other") and job_id != "nope"
        else "missing"
        for ns, job_id in wanted
    ]

    with counting(store) as sent:
        got = await asyncio.gather(*(_get(store, ns, job_id, False) for ns, job_id in wanted))
        got_with_stats = await asyncio.gather(*(_get(store, ns, job_id, True) for ns, job_id in wanted))

    assert got == expected
    assert got_with_stats == expected
    # Two statements per kind of read on PostgreSQL: the first read goes at once, alone, and the
    # others, waiting for it, go together; one per read on SQLite, which reads in process.
    assert len(sent) == (4 if backend == "postgres" else 2 * len(wanted))


@pytest.mark.postgres
async def test_concurrent_get_job_calls_each_get_their_own_job(fresh_database_url: Any) -> None:
    url = fresh_database_url("postgres")
    running = await create_server(Settings(listen="127.0.0.1:0", database_url=url, roles=frozenset({"api"})))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            jobs = JobServiceStub(channel)
            for i in range(50):
                request = job_service_pb2.CreateJobRequest(
                    parent=f"namespaces/{NS}", job_id=f"j{i}", job=job_pb2.Job(executor="noop")
                )
                await jobs.CreateJob(request)
            names = [f"namespaces/{NS}/jobs/j{i}" for i in range(50)] * 3 + [f"namespaces/{NS}/jobs/gone"]

            async def get(name: str) -> str:
                try:
                    reply = await jobs.GetJob(job_service_pb2.GetJobRequest(name=name))
                except grpc.aio.AioRpcError as error:
                    return f"{error.code().name}: {error.details()}"
                return reply.job.name

            store = running.store
            assert isinstance(store, SqlStore)
            with counting(store) as sent:
                # The first read waits on a lock of the table, so that every other call arrives
                # while it is in flight (however the machine schedules them) and waits for it.
                plain = create_async_engine(store.engine.url, poolclass=NullPool)
                try:
                    async with plain.begin() as blocker:
                        await blocker.execute(sa.text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
                        calls = asyncio.gather(*(get(name) for name in names))
                        await eventually(
                            lambda: sum(r.pending for r in store._key_reads.values()) == len(names),
                            30,
                            "every call waiting behind the first read",
                        )
                        await blocker.rollback()
                finally:
                    await plain.dispose()
                async with asyncio.timeout(60):  # reads left waiting for a batch would never end
                    got = await calls
            assert got[:-1] == names[:-1]
            assert got[-1].startswith("NOT_FOUND: ")
            assert "gone" in got[-1]
            reads = [s for s in sent if "FROM jobs" in s]
            assert 1 < len(reads) < len(names) // 10, reads  # the waiting ones were read together
    finally:
        await running.stop(grace=0)


@pytest.mark.postgres
async def test_a_read_whose_connection_was_cut_is_read_again(fresh_database_url: Any) -> None:
    url = fresh_database_url("postgres")
    store = await open_store(url)
    try:
        await store.create_job(Job(namespace=NS, id="kept", executor="noop", parameters={}))
        assert (await store.get_job(NS, "kept")).id == "kept"
        database = make_url(url).database
        async with store.engine.connect() as conn:
            cut = await conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            )
            assert cut.scalar_one() >= 1  # the reads' connection among them
        # The reads' connection is gone: the next read makes a new one, and the caller sees none
        # of it.
        assert (await store.get_job(NS, "kept", with_stats=True)).id == "kept"
        with pytest.raises(errors.NotFound):
            await store.get_job(NS, "gone")
    finally:
        await store.close()
