"""The event hub reads nothing while nobody watches, and a watcher that comes later still gets
exactly the events committed after it started (on each backend, a real store)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

import sqlalchemy as sa

from cronwire_server.core.model import EventFilter, Job
from cronwire_server.events import Delivery, EventHub, EventManager
from cronwire_server.storage.sql_store import SqlStore
from tests.support import wait_for

NS = "idle"


class Recorder:
    """The statements the store sends, but for those of the numbering itself."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.numbering = False

    def __call__(self, *args: object) -> None:
        if not self.numbering:
            self.sent.append(str(args[2]))

    def event_reads(self, since: int = 0) -> list[str]:
        """The statements that read events (the hub's pages and latest sequence)."""
        return [s for s in self.sent[since:] if s.lstrip().upper().startswith("SELECT") and " events" in s]

    async def create_jobs(self, store: SqlStore, *ids: str) -> None:
        for job_id in ids:
            await store.create_job(Job(namespace=NS, id=job_id, executor="noop", parameters={}))
        self.numbering = True
        try:
            await store.sequence_events(1000)  # wakes the hub when done
        finally:
            self.numbering = False


async def next_events(deliveries: AsyncIterator[Delivery]) -> list[str]:
    """The resources of the next delivery that carries events (heartbeats skipped)."""
    async with asyncio.timeout(30):
        async for delivery in deliveries:
            if delivery.batches:
                return [event.resource for batch in delivery.batches for event in batch.events]
    raise AssertionError("the watch ended")


async def test_an_idle_hub_sends_no_statement_and_a_late_watcher_starts_from_now(store: SqlStore) -> None:
    hub = EventHub(store)
    await hub.start()
    stopping = asyncio.Event()
    follower = asyncio.create_task(hub.follow(stopping))
    record = Recorder()
    engine = store.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        # Events are committed and numbered (each numbering wakes the hub) while nobody watches.
        await record.create_jobs(store, "before-1", "before-2")
        await asyncio.sleep(0.1)  # time for the hub to act on the wake-up, had it listened
        await record.create_jobs(store, "before-3")
        await asyncio.sleep(0.1)
        assert record.sent  # the hook sees the store's statements
        assert record.event_reads() == []

        # A watcher "from now" gets the next event, not the ones it came after.
        watch = EventManager(store, hub, heartbeat=0.2).watch(EventFilter(namespace=NS), after=0)
        first = await anext(watch)  # subscribed: its first delivery is a heartbeat
        assert first.batches == []
        await record.create_jobs(store, "after-1")
        assert await next_events(watch) == [f"namespaces/{NS}/jobs/after-1"]
        await cast(AsyncGenerator[Delivery, None], watch).aclose()  # unsubscribes
        assert record.event_reads()  # the watcher's

        # Nobody watches again: the hub goes quiet once more.
        wait_for(lambda: hub.watchers == 0, 10, "the watcher to leave")
        quiet = len(record.sent)
        await record.create_jobs(store, "later-1")
        await asyncio.sleep(0.1)
        assert record.event_reads(quiet) == []
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
        stopping.set()
        await follower
