"""Prometheus metrics: one place defines them; instrumented code calls the small functions here.

Metrics are process-global (the default registry), so several servers in one process add up
into the same counters. Labels are low-cardinality only: states, executor kinds, RPC methods,
never job names or execution ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.pool import Pool

from cronwire_server import __version__
from cronwire_server.api.handlers import behaviour_of, with_behaviour
from cronwire_server.config import host_and_port
from cronwire_server.model import SkipReason
from cronwire_server.storage import Store
from cronwire_server.storage.sql_store import SQL_SENT

log = logging.getLogger(__name__)

# The queue is read from the database when scraped, at most this often, never per RPC.
QUEUE_READ_INTERVAL = 1.0
# A scrape waits this long for that read, then shows the last values read.
QUEUE_READ_TIMEOUT = 2.0
# From a few milliseconds (a worker idle when the tick came) to minutes (a backlog).
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

# The *_created series double what is exposed and say nothing a restart does not.
disable_created_metrics()  # type: ignore[no-untyped-call]

BUILD_INFO = Gauge("cronwire_build_info", "The running cronwire version; always 1.", ["version"])
BUILD_INFO.labels(version=__version__).set(1)

EXECUTIONS_STARTED = Counter(
    "cronwire_executions_started_total", "Executions this process's workers started.", ["kind"]
)
EXECUTIONS_FINISHED = Counter(
    "cronwire_executions_finished_total",
    "Executions this process's workers ran that ended, by final state and executor kind.",
    ["state", "kind"],
)
EXECUTIONS_RUNNING = Gauge("cronwire_executions_running", "Executions this process's workers are running.")
SCHEDULING_LAG = Histogram(
    "cronwire_scheduling_lag_seconds",
    "How late executions start: start time minus due time (the scheduled time plus any jitter "
    "or retry backoff).",
    buckets=LAG_BUCKETS,
)
TICKS_SKIPPED = Counter(
    "cronwire_ticks_skipped_total",
    "Schedule ticks recorded as SKIPPED by this process's dispatcher, by reason.",
    ["reason"],
)
LEASE_RECOVERIES = Counter(
    "cronwire_lease_recoveries_total",
    "Executions this process found with an expired lease (their worker died) and marked LOST.",
)
WATCHERS = Gauge("cronwire_watchers", "Open WatchEvents streams on this process.")

# After go-grpc-prometheus, so existing dashboards and alerts apply as they are.
RPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
RPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, whatever their status code.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its end (streams: until the stream closes).",
    ["grpc_type", "grpc_service", "grpc_method"],
)

for _reason in SkipReason:
    TICKS_SKIPPED.labels(reason=_reason.name.lower())


# What instrumented code calls.


def execution_started(kind: str, late_seconds: float) -> None:
    EXECUTIONS_STARTED.labels(kind=kind).inc()
    EXECUTIONS_RUNNING.inc()
    SCHEDULING_LAG.observe(max(0.0, late_seconds))


def execution_left(kind: str, state: str | None) -> None:
    """A run this process started is over: `state` is its recorded end, None when it was put back
    in the queue or another replica had taken it over."""
    EXECUTIONS_RUNNING.dec()
    if state is not None:
        EXECUTIONS_FINISHED.labels(state=state, kind=kind).inc()


def ticks_skipped(reasons: Iterable[SkipReason]) -> None:
    for reason in reasons:
        TICKS_SKIPPED.labels(reason=reason.name.lower()).inc()


def lease_recovered(count: int) -> None:
    LEASE_RECOVERIES.inc(count)


def watcher_opened() -> None:
    WATCHERS.inc()


def watcher_closed() -> None:
    WATCHERS.dec()


# RPCs


_STREAMING = {
    (False, False): "unary",
    (True, False): "client_stream",
    (False, True): "server_stream",
    (True, True): "bidi_stream",
}


def _code_after(error: BaseException | None, context: grpc.aio.ServicerContext[Any, Any]) -> str:
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED.name
    # Set by abort, abort_with_status or set_code; None when the handler just returned or raised.
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return grpc.StatusCode.OK.name if error is None else grpc.StatusCode.UNKNOWN.name


@dataclass
class _Rpc:
    labels: tuple[str, str, str]
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        RPC_STARTED.labels(*self.labels).inc()

    def end(self, error: BaseException | None, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        RPC_HANDLED.labels(*self.labels, _code_after(error, context)).inc()
        RPC_SECONDS.labels(*self.labels).observe(time.perf_counter() - self.started)


def _measured(behaviour: Callable[..., Any], labels: tuple[str, str, str]) -> Callable[..., Any]:
    """`behaviour` (a coroutine or async generator function), counted when it starts and ends."""
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            rpc = _Rpc(labels)
            error: BaseException | None = None
            try:
                async for response in behaviour(request, context):
                    yield response
            except BaseException as raised:
                error = raised
                raise
            finally:
                rpc.end(error, context)

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        rpc = _Rpc(labels)
        error: BaseException | None = None
        try:
            result = behaviour(request, context)
            return await result if inspect.isawaitable(result) else result
        except BaseException as raised:
            error = raised
            raise
        finally:
            rpc.end(error, context)

    return call


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts every RPC the server knows, by method and final status code.

    It must come first among the interceptors, so calls a later one refuses are counted too.
    Unknown methods are not counted: their names come from callers and would be unbounded.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        grpc_type = _STREAMING[(handler.request_streaming, handler.response_streaming)]
        return with_behaviour(handler, _measured(behaviour_of(handler), (grpc_type, service, method)))


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
class MetricsEndpoint:
    """The HTTP server that exposes /metrics, and what it reads at scrape time."""

    port: int
    _http: WSGIServer
    _thread: threading.Thread
    _store: Store
    _pool: Pool | None

    async def close(self) -> None:
        _QUEUE.remove(self._store)
        if self._pool is not None:
            _POOLS.remove(self._pool)
        self._http.shutdown()
        self._http.server_close()
        await asyncio.to_thread(self._thread.join, 5.0)


def serve_metrics(address: str, store: Store, pool: Pool | None) -> MetricsEndpoint:
    """Serve the metrics at http://ADDRESS/metrics (port 0: a free one, see `.port`).
    Call it on the event loop that `store` runs on."""
    host, port = host_and_port(address)
    try:
        http, thread = start_http_server(port, addr=host)
    except OSError as error:
        raise SystemExit(f"cannot serve metrics on {address}: {error}") from error
    _QUEUE.add(store, asyncio.get_running_loop())
    if pool is not None:
        _POOLS.add(pool)
    return MetricsEndpoint(http.server_port, http, thread, store, pool)


def seconds_late(started: datetime | None, due: datetime | None) -> float:
    if started is None or due is None:
        return 0.0
    return (started - due).total_seconds()
