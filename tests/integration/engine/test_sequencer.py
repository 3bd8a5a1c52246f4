"""Two replicas' sequencers numbering at once, while events keep coming (PostgreSQL, real
stores on one database): every event gets one sequence, and the sequences have no gap and no
repeat."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from cronwire_server.core.model import EventFilter, Job
from cronwire_server.storage.sql_store import open_store

pytestmark = pytest.mark.postgres

NS = "seq"
ROUNDS = 20


async def test_sequencers_of_two_replicas_number_once_in_order(
    fresh_database_url: Callable[[str], str],
) -> None:
    url = fresh_database_url("postgres")
    first, second = await open_store(url), await open_store(url)
    try:
        await first.create_job(Job(namespace=NS, id="noop", executor="noop", parameters={}))
        numbered = 0
        for _ in range(ROUNDS):
            writes = [first.run_job(NS, "noop", {}) for _ in range(5)]
            counts = await asyncio.gather(
                *writes, first.sequence_events(3), second.sequence_events(3), second.sequence_events(100)
            )
            numbered += sum(counts[len(writes) :])
        while batch := await first.sequence_events(100):
            numbered += batch
        events = await first.read_events(EventFilter(namespace=NS), after=0, limit=10_000)
        assert numbered == len(events) == 1 + 5 * ROUNDS  # the job's, then each run's QUEUED
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    finally:
        await first.close()
        await second.close()
