"""Prometheus metrics: one place defines them; instrumented code calls the small functions here.

Metrics are process-global (the default registry), so several servers in one process add up
into the same counters. Labels are low-cardinality only: states, executor kinds, RPC methods,
never job names or execution ids. Collectors read at scrape time and the HTTP endpoint live in
metrics_endpoint.py, the RPC interceptor in api/rpc_metrics.py: this module imports neither
grpc nor the database, so the scheduler core can count what it does.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

from cronwire_server import __version__
from cronwire_server.core.model import SkipReason

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
DEADLINES_MISSED = Counter(
    "cronwire_deadlines_missed_total",
    "Schedule deadlines this process found missed (each miss is counted by one replica), by "
    "deadline: start_within, finish_by, max_duration.",
    ["deadline"],
)
NOTIFICATIONS = Counter(
    "cronwire_notification_attempts_total",
    "Attempts this process made at sending a notification, by destination and outcome "
    "(delivered, retrying, failed).",
    ["destination", "outcome"],
)

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


def seconds_late(started: datetime | None, due: datetime | None) -> float:
    if started is None or due is None:
        return 0.0
    return (started - due).total_seconds()
