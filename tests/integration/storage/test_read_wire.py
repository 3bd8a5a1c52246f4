"""The reads' own connection on PostgreSQL (`sql_wire`): statements in flight together each get
their own rows, whatever a caller that went away left behind; a read whose connection is cut
in flight is read again; a read whose prepared statement went stale is prepared again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cronwire_server.core.model import IntervalSpec, Job, Schedule
from cronwire_server.storage.sql_store import SqlStore, open_store
from cronwire_server.storage.sql_wire import Wire
from tests.integration.storage.sessions import waiting_on_a_lock, watching
from tests.support import eventually

pytestmark = pytest.mark.postgres

NS = "wire"


@pytest.fixture
async def store(fresh_database_url: Any) -> AsyncIterator[SqlStore]:
    opened = await open_store(fresh_database_url("postgres"))
    try:
        await opened.create_job(Job(namespace=NS, id="a", executor="noop", parameters={}, description="A"))
        await opened.create_job(Job(namespace=NS, id="b", executor="noop", parameters={}, description="B"))
        yield opened
    finally:
        await opened.close()


async def _blocked_read(
    store: SqlStore, locker: AsyncConnection, watcher: AsyncConnection
) -> asyncio.Task[Job]:
    """A read of job `a` in flight on the reads' connection, waiting for `locker`'s lock of jobs."""
    await locker.execute(sa.text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
    first = asyncio.create_task(store.get_job(NS, "a"))
    await eventually(lambda: waiting_on_a_lock(watcher, store), 10, "the read waiting for the lock")
    return first


async def test_statements_in_flight_together_each_get_their_own_rows_when_a_caller_goes_away(
    store: SqlStore, plain: AsyncEngine
) -> None:
    every = IntervalSpec(timedelta(hours=1))
    await store.create_schedule(Schedule(namespace=NS, id="s", job_id="b", trigger=every))
    async with plain.begin() as locker, watching(plain) as watcher:
        first = await _blocked_read(store, locker, watcher)
        # More wait behind it: a read of the same kind, and statements of other kinds queued
        # behind it on the one connection.
        same = asyncio.create_task(store.get_job(NS, "b"))
        with_stats = asyncio.create_task(store.get_job(NS, "b", with_stats=True))
        scheduled = asyncio.create_task(store.get_schedule(NS, "s"))
        await eventually(lambda: sum(r.pending for r in store._key_reads.values()) == 4, 10, "all sent")
        first.cancel()
        await locker.rollback()
    with pytest.raises(asyncio.CancelledError):
        await first
    async with asyncio.timeout(30):  # left waiting for a batch nobody sends, they would never end
        got_same, got_b, got_s = await asyncio.gather(same, with_stats, scheduled)
    assert got_same.description == "B"
    assert (got_b.id, got_b.description, got_b.stats is not None) == ("b", "B", True)
    assert (got_s.id, got_s.job_id, got_s.trigger) == ("s", "b", every)
    # The row the cancelled read brought back went nowhere: the next reads are each their own.
    assert [j.description for j in await asyncio.gather(*(store.get_job(NS, i) for i in "ab"))] == ["A", "B"]


async def test_a_read_whose_connection_is_cut_in_flight_is_read_again(
    store: SqlStore, plain: AsyncEngine
) -> None:
    await store.get_job(NS, "b")  # the connection is made (one that fails as it is made is not retried)
    async with plain.begin() as locker, watching(plain) as watcher:
        first = await _blocked_read(store, locker, watcher)
        [reader] = await waiting_on_a_lock(watcher, store)
        await watcher.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": reader})
        # Read again on a new connection, which waits for the same lock.
        await eventually(
            lambda: _new_reader(watcher, store, reader), 10, "the read sent again on a new connection"
        )
        await locker.rollback()
    assert (await first).description == "A"


async def _new_reader(watcher: AsyncConnection, store: SqlStore, old: int) -> bool:
    return any(pid != old for pid in await waiting_on_a_lock(watcher, store))


async def test_a_read_whose_prepared_statement_went_stale_is_prepared_again(store: SqlStore) -> None:
    assert (await store.get_job(NS, "a")).description == "A"
    # A migration changes a column's type while the server runs: the prepared read's result
    # type changed, which PostgreSQL refuses to execute ("cached plan must not change result type").
    async with store.engine.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE jobs ALTER COLUMN description TYPE varchar(100)"))
    assert (await store.get_job(NS, "a")).description == "A"
    assert (await store.get_job(NS, "b", with_stats=False)).description == "B"


async def test_a_statement_whose_caller_went_away_in_flight_leaves_the_next_their_own_rows(
    store: SqlStore, plain: AsyncEngine
) -> None:
    url = make_url(str(store.engine.url)).set(drivername="postgresql")
    conn = await psycopg.AsyncConnection.connect(
        url.render_as_string(hide_password=False), autocommit=True, application_name="cronwire"
    )
    wire = Wire(conn)
    try:
        async with plain.begin() as locker, watching(plain) as watcher:
            await locker.execute(sa.text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
            counting = asyncio.create_task(
                wire.fetch(b"SELECT count(*) FROM jobs WHERE namespace = $1", [NS])
            )
            await eventually(lambda: waiting_on_a_lock(watcher, store), 10, "the count waiting")
            echoed = [asyncio.create_task(wire.fetch(b"SELECT $1::text", [text])) for text in ("x", "y")]
            counting.cancel()
            await locker.rollback()
        async with asyncio.timeout(30):  # a wire that lost its place would never answer them
            assert [(await task)[1] for task in echoed] == [[("x",)], [("y",)]]
        assert counting.cancelled()
        assert (await wire.fetch(b"SELECT count(*) FROM jobs WHERE namespace = $1", [NS]))[1] == [(2,)]
    finally:
        await wire.close()
