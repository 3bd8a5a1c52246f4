"""Job creates on PostgreSQL go in batches, each a transaction on the creates' own connection
(`sql_wire.WireConnection.transaction`): a batch whose connection is cut in flight fails as
unavailable, leaves nothing behind and is not sent again, and a retry creates the job; a batch
after the connection was cut while idle (a database restart) goes on a new one; a batch
that a statement fails is rolled back, each of its creates goes again alone (one create's error
never fails another), and the connection goes on serving the batches after it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cronwire_server.core.errors import NotFound, StorageUnavailable
from cronwire_server.core.model import Job
from cronwire_server.storage.sql_store import SqlStore, open_store
from tests.integration.storage.sessions import waiting_on_a_lock, watching
from tests.support import eventually

pytestmark = pytest.mark.postgres

NS = "creates"
LIMIT = 100  # a namespace quota: the batch locks the namespace's counter row


@pytest.fixture
async def store(fresh_database_url: Callable[[str], str]) -> AsyncIterator[SqlStore]:
    opened = await open_store(fresh_database_url("postgres"))
    try:
        await _create(opened, "first")  # the creates' connection is made
        yield opened
    finally:
        await opened.close()


async def _create(store: SqlStore, job_id: str) -> Job:
    return await store.create_job(
        Job(namespace=NS, id=job_id, executor="noop", parameters={}), request_id=f"r-{job_id}", limit=LIMIT
    )


async def _stored(plain: AsyncEngine) -> tuple[list[str], int, int, int]:
    """The namespace's job ids, its job count, its job events and recorded request ids."""
    async with plain.connect() as conn:
        ids = (
            await conn.execute(sa.text("SELECT id FROM jobs WHERE namespace = :ns ORDER BY id"), {"ns": NS})
        ).scalars()
        used = await conn.scalar(
            sa.text("SELECT used FROM namespace_usage WHERE namespace = :ns AND kind = 'job'"), {"ns": NS}
        )
        events = await conn.scalar(
            sa.text("SELECT count(*) FROM events WHERE namespace = :ns AND type = 'job_created'"), {"ns": NS}
        )
        requests = await conn.scalar(
            sa.text("SELECT count(*) FROM request_ids WHERE namespace = :ns"), {"ns": NS}
        )
        return list(ids), int(used or 0), int(events or 0), int(requests or 0)


async def test_a_batch_whose_connection_is_cut_leaves_nothing_and_is_not_sent_again(
    store: SqlStore, plain: AsyncEngine
) -> None:
    before = await _stored(plain)
    async with plain.begin() as locker, watching(plain) as watcher:
        await locker.execute(sa.text("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE"))
        creating = asyncio.create_task(_create(store, "cut"))
        [creator] = await eventually(lambda: waiting_on_a_lock(watcher, store), 10, "the batch waiting")
        await watcher.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": creator})
        with pytest.raises(StorageUnavailable):
            await asyncio.wait_for(creating, 30)
        # Not sent again behind the caller's back: nothing of the store waits for the lock now.
        assert await waiting_on_a_lock(watcher, store) == []
        await locker.rollback()
    assert await _stored(plain) == before  # no row, count, event or request id half-way
    created = await _create(store, "cut")  # the caller's retry, on a new connection
    assert created.id == "cut"
    ids, used, events, requests = await _stored(plain)
    assert (ids, used, events, requests) == (["cut", "first"], 2, 2, 2)


async def test_a_batch_a_statement_fails_is_rolled_back_and_each_create_goes_alone(
    store: SqlStore, plain: AsyncEngine
) -> None:
    async with plain.begin() as conn:  # the database refuses one id (as a constraint would)
        await conn.execute(
            sa.text(
                "CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.id = 'bad' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$"
            )
        )
        await conn.execute(
            sa.text(
                "CREATE TRIGGER refuse_bad BEFORE INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION refuse_bad()"
            )
        )
    names = ["a", "bad", "b", "c"]
    async with plain.begin() as locker, watching(plain) as watcher:
        # The creates wait together behind a held counter row, then go as one batch.
        await locker.execute(sa.text("LOCK TABLE namespace_usage IN SHARE ROW EXCLUSIVE MODE"))
        calls = asyncio.gather(*(_create(store, n) for n in names), return_exceptions=True)
        await eventually(lambda: store._creates["job"].pending >= len(names), 10, "the creates waiting")
        [creator] = await waiting_on_a_lock(watcher, store)
        await locker.rollback()
    got = await asyncio.wait_for(calls, 30)
    assert [g.id if isinstance(g, Job) else None for g in got] == ["a", None, "b", "c"]
    assert "refused" in str(got[1])
    ids, used, events, requests = await _stored(plain)
    assert (ids, used, events, requests) == (["a", "b", "c", "first"], 4, 4, 4)
    with pytest.raises(NotFound):
        await store.get_job(NS, "bad")
    # The same connection serves the next batch: the failed one was rolled back on it.
    await _create(store, "after")
    async with watching(plain) as watcher:
        pids = await watcher.scalars(
            sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = 'cronwire' AND pid = :pid"),
            {"pid": creator},
        )
        assert list(pids) == [creator]
    assert (await _stored(plain))[0] == ["a", "after", "b", "c", "first"]


async def test_a_batch_after_its_idle_connection_was_cut_goes_on_a_new_one(
    store: SqlStore, plain: AsyncEngine
) -> None:
    async with watching(plain) as watcher:
        # The creates' connection, idle since the fixture's create ended with its COMMIT.
        found = await watcher.scalars(
            sa.text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'cronwire' AND state = 'idle' AND query = 'COMMIT'"
            )
        )
        [idle] = list(found)
        await watcher.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": idle})
        await eventually(lambda: _gone(watcher, idle), 10, "the creates' connection to be gone")
    created = await _create(store, "after-restart")  # not UNAVAILABLE: nothing was sent on the cut one
    assert created.id == "after-restart"
    assert (await _stored(plain))[0] == ["after-restart", "first"]


async def test_a_batch_whose_begin_finds_the_connection_cut_goes_on_a_new_one(
    store: SqlStore, plain: AsyncEngine
) -> None:
    # The cut noticed only once the BEGIN was sent (the server ended the session as the batch
    # came): nothing was sent in the transaction, so it is begun again on a new connection.
    connection = store._creates_connection
    assert connection is not None
    wire = connection._wire
    assert wire is not None
    wire._loop.remove_reader(wire._socket)  # the loop does not look at the socket meanwhile
    async with watching(plain) as watcher:
        await watcher.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": wire._pgconn.backend_pid})
        await eventually(lambda: _gone(watcher, wire._pgconn.backend_pid), 10, "the session to be gone")
    # Looked at again from the next turn of the loop: after the batch's task has sent its BEGIN.
    wire._loop.add_reader(wire._socket, wire._readable)
    created = await _create(store, "after-cut")
    assert created.id == "after-cut"
    assert connection._wire is not wire


async def _gone(watcher: AsyncConnection, pid: int) -> bool:
    found = await watcher.scalar(
        sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
    )
    return found == 0
