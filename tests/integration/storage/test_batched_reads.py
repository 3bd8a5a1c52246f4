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
from cronwire_server.storage import sql_creates, sql_reads
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


def _pending_reads(store: SqlStore) -> int:
    return sum(reads.pending for reads in store._key_reads.values())


async def _in_turn(store: SqlStore, *ids: str, hold: bool) -> tuple[list[str], list[str]]:
    """Reads of `ids`, each submitted once the one before has; the results and the reads sent.

    With `hold`, a lock on the table keeps the first read in flight until every read is
    submitted, however the machine schedules them. Without, nothing can end a read's wait for
    others before the next is submitted: the loop runs the next one before any timer."""
    with counting(store) as sent:
        plain = create_async_engine(store.engine.url, poolclass=NullPool)
        try:
            async with plain.begin() as blocker:
                if hold:
                    await blocker.execute(sa.text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
                reads = []
                for job_id in ids:
                    reads.append(asyncio.create_task(_get(store, NS, job_id, False)))
                    await asyncio.sleep(0)
                assert _pending_reads(store) == len(ids)  # none answered yet
        finally:
            await plain.dispose()
        got = await asyncio.gather(*reads)
    return got, [statement for statement in sent if "FROM jobs" in statement]


@pytest.mark.postgres
async def test_while_callers_are_concurrent_a_read_waits_for_others_and_a_lone_caller_stops_it(
    fresh_database_url: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # However slowly the machine runs the steps, callers stay concurrent until a lone one.
    monkeypatch.setattr(sql_creates, "CONCURRENT_FOR", 600.0)
    store = await open_store(fresh_database_url("postgres"))
    try:
        for i in range(6):
            await store.create_job(Job(namespace=NS, id=f"j{i}", executor="noop", parameters={}))
        # Up to three callers: the first goes at once and the others wait for it, every time.
        for ids in (("j0", "j1"), ("j0", "j1", "j2"), ("j3", "j4"), ("j3", "j4", "j5"), ("j2", "j3")):
            got, reads = await _in_turn(store, *ids, hold=True)
            assert got == [f"{NS}/{job_id}/noop" for job_id in ids]
            assert len(reads) == 2
        # Four: the same, but callers are concurrent now.
        got, reads = await _in_turn(store, "j0", "j1", "j2", "j3", hold=True)
        assert got == [f"{NS}/j{i}/noop" for i in range(4)]
        assert len(reads) == 2
        # So the first of two waits for the second, and both go in one statement.
        got, reads = await _in_turn(store, "j3", "nope", hold=False)
        assert got == [f"{NS}/j3/noop", "missing"]
        assert len(reads) == 1
        # A read alone waits, finds no one, and ends that: the next two go as the first two did.
        assert await _get(store, NS, "j4", False) == f"{NS}/j4/noop"
        got, reads = await _in_turn(store, "j4", "j5", hold=True)
        assert got == [f"{NS}/j4/noop", f"{NS}/j5/noop"]
        assert len(reads) == 2
    finally:
        await store.close()


@pytest.mark.postgres
async def test_a_read_waiting_for_others_goes_once_as_many_wait_as_lately_read_together(
    fresh_database_url: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A window no test could sit out: the reads must go because enough of them wait.
    monkeypatch.setattr(sql_reads, "READ_WINDOW", 600.0)
    monkeypatch.setattr(sql_creates, "CONCURRENT_FOR", 600.0)
    store = await open_store(fresh_database_url("postgres"))
    try:
        for i in range(8):
            await store.create_job(Job(namespace=NS, id=f"j{i}", executor="noop", parameters={}))
        # Four: the first goes alone, the three others wait for it and go together.
        got, reads = await _in_turn(store, "j0", "j1", "j2", "j3", hold=True)
        assert got == [f"{NS}/j{i}/noop" for i in range(4)]
        assert len(reads) == 2
        # Callers are concurrent, and read three at a time lately: three reads go as soon as
        # all three wait.
        async with asyncio.timeout(60):
            got, reads = await _in_turn(store, "j5", "j6", "j7", hold=False)
        assert got == [f"{NS}/j{i}/noop" for i in (5, 6, 7)]
        assert len(reads) == 1
    finally:
        await store.close()


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
