"""Event retention on real stores: a prune pass deletes the numbered events older than the
cutoff among the oldest it reads, always keeps the newest, and reads no more than its batch."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa

from cronwire_server.core.model import EventFilter, EventType, Job
from cronwire_server.storage import sql_events
from cronwire_server.storage.sql_engine import sync_url
from cronwire_server.storage.sql_store import SqlStore, open_store
from cronwire_server.storage.tables import events
from tests.support import rows_read

NS = "retention"


async def numbered_sequences(store: SqlStore) -> list[int]:
    while await store.sequence_events(1000):
        pass
    return [e.sequence for e in await store.read_events(EventFilter(namespace=NS), after=0, limit=10_000)]


async def test_a_prune_deletes_the_old_among_the_oldest_and_keeps_the_newest(database_url: str) -> None:
    store = await open_store(database_url)
    try:
        await store.create_job(Job(namespace=NS, id="noop", executor="noop", parameters={}))
        for _ in range(5):
            await store.run_job(NS, "noop", {})
        first, *middle, newest = await numbered_sequences(store)
        now = await store.now()
        # Commit order is about time order, not exactly: the first event is the newest by time.
        async with store.engine.begin() as conn:
            await conn.execute(sa.update(events).values(time=now - timedelta(days=30)))
            await conn.execute(
                sa.update(events).where(events.c.sequence == first).values(time=now + timedelta(days=1))
            )

        assert await store.prune_events(now, limit=1000) == len(middle) == 4
        assert await numbered_sequences(store) == [first, newest]
        assert await store.prune_events(now, limit=1000) == 0
    finally:
        await store.close()


@pytest.mark.postgres
async def test_a_prune_pass_reads_at_most_its_batch(fresh_database_url: Callable[[str], str]) -> None:
    url = fresh_database_url("postgres")
    store = await open_store(url)
    engine = sa.create_engine(sync_url(url), poolclass=sa.pool.NullPool)
    try:
        now = await store.now()
        row = {
            "type": EventType.JOB_CREATED.value,
            "namespace": NS,
            "resource": "r",
            "job_id": "j",
            "schedule_id": "",
        }
        with engine.begin() as conn:
            conn.execute(sa.insert(events), [{**row, "actor": "", "time": now}] * 3000)
        await numbered_sequences(store)
        with engine.connect() as conn:
            # None is older than a day: nothing to delete, whatever the plan, in at most 100 reads.
            assert sql_events.prune(conn, now - timedelta(days=1), 100) == 0
            read = rows_read(conn, "events")
            conn.rollback()
        assert read <= 101, f"{read} events read by one prune pass of 100"
    finally:
        engine.dispose()
        await store.close()
