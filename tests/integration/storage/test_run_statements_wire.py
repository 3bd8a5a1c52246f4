"""The statements of every run on their own connections on PostgreSQL (`sql_wire.WireConnection`):
a finish whose connection is cut in flight fails as unavailable and is not sent again (it may
have committed; the caller's retry finds out), and the retry, on a new connection, ends the
runs; a numbering whose connection is cut is sent again; claims keep the queue's session
settings on their own connection; the finish's row lock reads by primary key once the table grew,
and its rows are ended by address with one plan however the table grew."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cronwire_server.core.errors import StorageUnavailable
from cronwire_server.core.model import ExecutionState, Job
from cronwire_server.executors.runtime import RunOutcome
from cronwire_server.storage import migrate
from cronwire_server.storage.base import ClaimedExecution
from cronwire_server.storage.sql_driver import PreparedStatement
from cronwire_server.storage.sql_store import SqlStore, open_store
from cronwire_server.workers import plan_retry
from tests.integration.storage.sessions import waiting_on_a_lock, watching
from tests.support import eventually

pytestmark = pytest.mark.postgres

NS = "hot"
WORKER = "host:1:abc"
LEASE = timedelta(seconds=60)
SEQUENCER_LOCK = 0x63726F6E77697265  # migration 0017's


@pytest.fixture
async def store(fresh_database_url: Callable[[str], str]) -> AsyncIterator[SqlStore]:
    opened = await open_store(fresh_database_url("postgres"))
    try:
        await opened.create_job(Job(namespace=NS, id="noop", executor="noop", parameters={}))
        yield opened
    finally:
        await opened.close()


async def _running(store: SqlStore, count: int) -> list[ClaimedExecution]:
    for _ in range(count):
        await store.run_job(NS, "noop", {})
    claimed = await store.claim_executions(WORKER, count, LEASE)
    assert len(claimed) == count
    return claimed


async def test_a_finish_whose_connection_is_cut_is_not_sent_again_and_its_retry_ends_the_runs(
    store: SqlStore, plain: AsyncEngine
) -> None:
    first, *claimed = await _running(store, 3)
    # The finishes' connection is made (one that fails as it is made fails whatever the kind).
    await store.finish_executions([(first, RunOutcome(ExecutionState.SUCCEEDED))], WORKER, plan_retry)
    items = [(c, RunOutcome(ExecutionState.SUCCEEDED, exit_code=0)) for c in claimed]
    async with plain.begin() as locker, watching(plain) as watcher:
        await locker.execute(sa.text("LOCK TABLE executions IN ACCESS EXCLUSIVE MODE"))
        finishing = asyncio.create_task(store.finish_executions(items, WORKER, plan_retry))
        [finisher] = await eventually(lambda: waiting_on_a_lock(watcher, store), 10, "the finish waiting")
        await watcher.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": finisher})
        with pytest.raises(StorageUnavailable):
            await asyncio.wait_for(finishing, 30)
        # Not sent again behind the caller's back: nothing of the store waits for the lock now.
        assert await waiting_on_a_lock(watcher, store) == []
        await locker.rollback()
    ended = await store.finish_executions(items, WORKER, plan_retry)
    assert [e.state if e else None for e in ended] == [ExecutionState.SUCCEEDED] * 2
    assert [e.exit_code if e else None for e in ended] == [0, 0]


async def test_a_numbering_whose_connection_is_cut_is_sent_again(store: SqlStore, plain: AsyncEngine) -> None:
    await store.sequence_events(100)  # the connection is made (one that fails as it is made is not retried)
    await store.run_job(NS, "noop", {})  # an event to number
    async with plain.begin() as locker, watching(plain) as watcher:
        await locker.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SEQUENCER_LOCK})
        numbering = asyncio.create_task(store.sequence_events(100))
        [sequencer] = await eventually(lambda: waiting_on_a_lock(watcher, store), 10, "the numbering waiting")
        await watcher.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": sequencer})

        async def sent_again() -> bool:
            return any(pid != sequencer for pid in await waiting_on_a_lock(watcher, store))

        await eventually(sent_again, 10, "the numbering sent again on a new connection")
        await locker.rollback()
    assert await asyncio.wait_for(numbering, 30) >= 1
    assert await store.latest_event_sequence() >= 1


async def test_a_migration_queues_on_a_lock_of_its_own_not_the_sequencers(
    store: SqlStore, plain: AsyncEngine
) -> None:
    # The statements of every run hold the sequencer's lock from their events' insert to their
    # commit, with their tables' locks. A migration, whose DDL takes its tables' locks, must not
    # queue on that same lock: each would wait for the other.
    url = plain.url.render_as_string(hide_password=False)
    async with plain.begin() as locker:
        await locker.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SEQUENCER_LOCK})
        await asyncio.wait_for(migrate.upgrade_async(url), 30)


async def test_the_finish_row_lock_reads_by_primary_key_once_the_table_has_grown(plain: AsyncEngine) -> None:
    # A session that locked rows while `executions` was small (a new database: an index led by
    # the namespace then costs what the primary key does), then again once it has grown: each
    # lock still reads one index entry per key, not every row of the namespace (migration 0027).
    keys = sa.text("SELECT count(*) FROM cronwire_lock_executions(CAST(:ns AS text[]), CAST(:ids AS text[]))")
    ids = [f"e{n}" for n in range(1, 3000, 200)]
    async with plain.connect() as conn:
        await _insert_executions(conn, 1, 200)
        for _ in range(10):  # past the calls after which PostgreSQL may keep a generic plan
            await conn.execute(keys, {"ns": [NS] * len(ids), "ids": ids})
        await _insert_executions(conn, 201, 3000)
        before = await _index_entries_read(conn)
        locked = (await conn.execute(keys, {"ns": [NS] * len(ids), "ids": ids})).scalar_one()
        read = await _index_entries_read(conn) - before
        await conn.rollback()
    assert locked == len(ids)
    assert read <= 2 * len(ids), f"{read} index entries read to lock {len(ids)} rows"


async def test_a_finish_planned_once_ends_its_rows_by_address_however_the_table_grew(
    plain: AsyncEngine,
) -> None:
    # The finishes' session keeps one plan (sql_engine.FINISH_SESSION_OPTIONS), made here while
    # `executions` is small; once it has grown, ending rows still reads one index entry per row
    # (its lock, by primary key) and finds each row by its address (migration 0031).
    end = sa.text("SELECT count(*) FROM cronwire_end_executions(CAST(:outcomes AS jsonb), :worker, false)")
    ids = [f"e{n}" for n in range(1, 3000, 200)]
    outcomes = json.dumps(
        [
            {
                "namespace": NS,
                "id": i,
                "state": "succeeded",
                "output": "",
                "output_truncated": False,
                "error": "",
                "waited": 0,
            }
            for i in ids
        ]
    )
    async with plain.connect() as conn:
        await conn.execute(sa.text("SET plan_cache_mode = force_generic_plan"))
        await _insert_executions(conn, 1, 200, state="running", worker=WORKER)
        await conn.commit()
        for _ in range(10):
            assert (await conn.execute(end, {"outcomes": outcomes, "worker": WORKER})).scalar_one() == 1
            await conn.rollback()
        await _insert_executions(conn, 201, 3000, state="running", worker=WORKER)
        await conn.commit()
        before = await _index_entries_read(conn)
        ended = (await conn.execute(end, {"outcomes": outcomes, "worker": WORKER})).scalar_one()
        read = await _index_entries_read(conn) - before
        await conn.rollback()
        # Only the finisher's own runs are ended.
        assert (await conn.execute(end, {"outcomes": outcomes, "worker": "another:2:def"})).scalar_one() == 0
        await conn.rollback()
    assert ended == len(ids)
    assert read <= 2 * len(ids), f"{read} index entries read to end {len(ids)} rows"


async def _insert_executions(
    conn: AsyncConnection, first: int, last: int, state: str = "succeeded", worker: str = ""
) -> None:
    """Executions e<first>..e<last> of one job (ended, unless `state` says otherwise), written
    straight into the table."""
    await conn.execute(
        sa.text(
            "INSERT INTO executions (namespace, id, job_id, schedule_id, state, trigger, scheduled_time,"
            " due_time, create_time, attempt, first_attempt_id, parent_execution_id, output,"
            " output_truncated, cancel_requested, worker, arguments, serial, error, skip_reason)"
            " SELECT :ns, 'e' || g, 'noop', '', :state, 'manual', now(), now(), now(), 1, '', '',"
            " '', false, false, :worker, '{}', false, '', ''"
            " FROM generate_series(CAST(:first AS int), CAST(:last AS int)) AS g"
        ),
        {"ns": NS, "first": first, "last": last, "state": state, "worker": worker},
    )


async def _index_entries_read(conn: AsyncConnection) -> int:
    """Index entries of `executions` that the statements of `conn`'s open transaction read (the
    queries of functions included): what the plans really cost, whatever their estimates."""
    found = await conn.execute(
        sa.text(
            "SELECT coalesce(sum(pg_stat_get_xact_tuples_returned(indexrelid)), 0)"
            " FROM pg_stat_user_indexes WHERE relname = 'executions'"
        )
    )
    return int(found.scalar_one())


async def test_claims_go_on_a_connection_with_the_queues_session_settings(store: SqlStore) -> None:
    # A claim's plan relies on them (`sql_engine.QUEUE_SESSION_OPTIONS`): asked on the claims' own
    # connection, after a claim has made it.
    await _running(store, 1)
    hot = store._hot
    assert hot is not None
    asked = sa.text("SELECT current_setting('enable_bitmapscan') AS value")
    setting = PreparedStatement(asked.columns(sa.column("value", sa.Text())), store.engine.dialect)
    assert await hot._claims.fetch(setting, {}) == [{"value": "off"}]
    assert await hot._finishes.fetch(setting, {}) == [{"value": "on"}]  # only the claims'
