"""What /metrics (served by the HTTP listener, see web/) reads at scrape time: the queue (from the
database), the connection pools and the statements sent. The metrics themselves are defined in
metrics.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy.pool import Pool

from cronwire_server.storage import Store
from cronwire_server.storage.sql_engine import SQL_SENT

log = logging.getLogger(__name__)

# The queue is read from the database when scraped, at most this often, never per RPC.
QUEUE_READ_INTERVAL = 1.0
# A scrape waits this long for that read, then shows the last values read.
QUEUE_READ_TIMEOUT = 2.0


# The database: the queue (read at scrape time) and connection pool use.


class _PoolCollector(Collector):
    def __init__(self) -> None:
        self._pools: list[Pool] = []
        self._lock = threading.Lock()

    def add(self, pool: Pool) -> None:
        with self._lock:
            self._pools.append(pool)

    def remove(self, pool: Pool) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._pools.remove(pool)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        with self._lock:
            pools = list(self._pools)
        connections = GaugeMetricFamily(
            "cronwire_db_pool_connections",
            "Database connections of this process's pools, in use or idle.",
            labels=["state"],
        )
        connections.add_metric(["in_use"], sum(_pool_number(pool, "checkedout") for pool in pools))
        connections.add_metric(["idle"], sum(_pool_number(pool, "checkedin") for pool in pools))
        size = GaugeMetricFamily(
            "cronwire_db_pool_size", "Connections this process's database pools may hold open."
        )
        size.add_metric([], sum(_pool_number(pool, "size") for pool in pools))
        return [connections, size]


def _pool_number(pool: Pool, name: str) -> int:
    # QueuePool has these counters; other pool classes report nothing.
    method = getattr(pool, name, None)
    return int(method()) if callable(method) else 0


class _QueueCollector(Collector):
    """The QUEUED executions of all replicas, read from the database when Prometheus scrapes
    (from the HTTP server's thread, on the store's event loop); nothing is read while nobody
    scrapes. Several stores in one process (tests): the last one served is read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: list[tuple[Store, asyncio.AbstractEventLoop]] = []
        self._depth = 0
        self._oldest_age = 0.0
        self._read_at = -QUEUE_READ_INTERVAL

    def add(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._sources.append((store, loop))
            self._read_at = -QUEUE_READ_INTERVAL

    def remove(self, store: Store) -> None:
        with self._lock:
            self._sources = [(s, loop) for s, loop in self._sources if s is not store]

    def describe(self) -> Iterable[GaugeMetricFamily]:
        # Registering must not read the database: it runs on the event loop the read needs.
        return self._families()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        # The lock is not held while waiting for the loop, which may be taking it to remove a store.
        with self._lock:
            source = self._sources[-1] if self._sources else None
            due = time.monotonic() - self._read_at >= QUEUE_READ_INTERVAL
            if source and due:
                self._read_at = time.monotonic()  # one read at a time, however many scrape
        if source and due:
            self._read(*source)
        with self._lock:
            return self._families()

    def _read(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        try:
            if asyncio.get_running_loop() is loop:
                return  # collected on the store's own loop: waiting for it would deadlock
        except RuntimeError:
            pass
        if loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(store.queue_summary(), loop)
        try:
            summary = future.result(QUEUE_READ_TIMEOUT)
        except Exception as error:  # a scrape never fails for it: the last values are shown
            future.cancel()
            log.warning("metrics: cannot read the queue (%r); showing the last values", error)
            return
        oldest = summary.oldest_due_time
        with self._lock:
            self._depth = summary.depth
            self._oldest_age = max(0.0, (summary.now - oldest).total_seconds()) if oldest else 0.0

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "cronwire_queue_depth",
                "QUEUED executions in the database, all replicas together.",
                value=self._depth,
            ),
            GaugeMetricFamily(
                "cronwire_oldest_queued_age_seconds",
                "How long the longest-waiting due QUEUED execution has waited (0 when none is due).",
                value=self._oldest_age,
            ),
        ]


class _SqlCollector(Collector):
    """What the process sent to its databases (counted by the store's statement hook): the
    cost of the work in database calls, the figure a benchmark divides by executions."""

    def collect(self) -> Iterable[CounterMetricFamily]:
        return [
            CounterMetricFamily(
                "cronwire_sql_statements",
                "SQL statements sent (BEGIN/COMMIT not counted).",
                SQL_SENT.statements,
            ),
            CounterMetricFamily(
                "cronwire_sql_round_trips",
                "Calls to the database: statements, BEGIN and COMMIT (an executemany counts once).",
                SQL_SENT.round_trips,
            ),
        ]


_POOLS = _PoolCollector()
_QUEUE = _QueueCollector()
REGISTRY.register(_POOLS)
REGISTRY.register(_QUEUE)
REGISTRY.register(_SqlCollector())


@dataclass
class MetricsSource:
    """A store (and its connection pool) read by the collectors while it is attached."""

    _store: Store
    _pool: Pool | None

    def close(self) -> None:
        _QUEUE.remove(self._store)
        if self._pool is not None:
            _POOLS.remove(self._pool)


def attach_metrics(store: Store, pool: Pool | None) -> MetricsSource:
    """Read the queue from `store` and the use of `pool` at scrape time, until closed.
    Call it on the event loop that `store` runs on."""
    _QUEUE.add(store, asyncio.get_running_loop())
    if pool is not None:
        _POOLS.add(pool)
    return MetricsSource(store, pool)


async def render_metrics(accept: str) -> tuple[bytes, str]:
    """Every metric in the format `accept` asks for (text by default), and its content type.

    Collected in a thread: the queue collector waits there for its read on the store's loop."""
    encoder, content_type = choose_encoder(accept)
    body = await asyncio.to_thread(encoder, REGISTRY)
    return body, content_type
