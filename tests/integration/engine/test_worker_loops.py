"""A worker pool's loops run under the supervisor: the claimer stops first at shutdown, while what
running executions need (lease heartbeats, recovery, output, callbacks, the finisher) goes on until
they have drained."""

from __future__ import annotations

import asyncio

from cronwire_server.storage.sql_store import SqlStore
from cronwire_server.supervisor import MAIN, Supervisor
from cronwire_server.workers import WorkerPool

POOL_LOOPS = ["callbacks", "claimer", "finisher", "lease-heartbeat", "lease-recovery", "output"]


async def test_the_pool_loops_are_supervised_and_stop_in_phases(store: SqlStore) -> None:
    stopping = asyncio.Event()
    supervisor = Supervisor(stopping)
    pool = WorkerPool(store, slots=2)
    pool.start(supervisor, stopping)
    try:
        assert sorted(supervisor.names) == POOL_LOOPS
        assert supervisor.down() == []
        stopping.set()
        await supervisor.stop([MAIN], within=5)
        # Stopped on purpose is not down; the drain-phase loops still run.
        assert supervisor.down() == []
        await pool.drain(0)
    finally:
        await supervisor.stop(within=0)
