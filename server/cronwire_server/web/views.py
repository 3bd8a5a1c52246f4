"""What the dashboard's pages show, read through the same managers as the gRPC API, under the
visitor's principal: the same namespace scoping (api.scope, auth.principal), the same statistics.

Every read is bounded: a page shows at most a few hundred rows however many there are, and says
when it left some out.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cronwire_server.auth import principal
from cronwire_server.core.executions import ExecutionManager
from cronwire_server.core.model import (
    Execution,
    ExecutionState,
    ExecutionTrigger,
    Job,
    Listing,
    Page,
    Schedule,
)
from cronwire_server.core.schedules import ScheduleManager
from cronwire_server.core.triggers import PreviewTime
from cronwire_server.jobs import JobManager
from cronwire_server.storage import Store
from cronwire_server.storage.base import ExecutionFilter

# Bounds of what one page reads.
MAX_NAMESPACES = 200
MAX_JOBS_SHOWN = 500
RECENT_RUNS_PER_NAMESPACE = 1000
CELLS_PER_JOB = 20
MAX_SCHEDULES_SCANNED = 5000
PLOT_EXECUTIONS_PER_NAMESPACE = 1000
FAILURES_SHOWN = 20
NEXT_RUNS_SHOWN = 10
EXECUTIONS_ON_JOB_PAGE = 50
FIRE_TIMES_PER_SCHEDULE = 5
PLOT_BUCKETS = 12  # five minutes each, over the last hour
FAILED_STATES = (ExecutionState.FAILED, ExecutionState.TIMED_OUT, ExecutionState.LOST)


@dataclass(frozen=True)
class Readers:
    store: Store
    jobs: JobManager
    schedules: ScheduleManager
    executions: ExecutionManager


async def namespaces(store: Store) -> list[str]:
    """The namespaces the visitor sees that hold jobs or schedules, as ListNamespaces lists them."""
    visible = principal.visible_namespaces()
    counts = await store.namespace_counts()
    return sorted(n for n in counts if visible is None or n in visible)[:MAX_NAMESPACES]


async def _all_pages(read: Any, limit: int) -> list[Any]:
    items: list[Any] = []
    after: str | None = None
    while len(items) < limit:
        listing: Listing[Any] = await read(Page(min(1000, limit - len(items)), after))
        items += listing.items
        if listing.next_after is None:
            break
        after = listing.next_after
    return items


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class LagPoint:
    start: datetime
    samples: int
    p50: float
    p99: float


@dataclass(frozen=True)
class Plot:
    """The lag over the last hour as SVG coordinates (viewBox 0 0 600 160)."""

    points: list[LagPoint]
    p50_path: str
    p99_path: str
    top: float  # seconds at the top of the plot

    WIDTH = 600
    HEIGHT = 160


def lag_plot(executions: list[Execution], now: datetime) -> Plot:
    start = now - timedelta(hours=1)
    width = timedelta(hours=1) / PLOT_BUCKETS
    lags: list[list[float]] = [[] for _ in range(PLOT_BUCKETS)]
    for execution in executions:
        # As the cluster status counts it: runs started in the window, backfills left out.
        started = execution.start_time
        if started is None or started < start or execution.trigger is ExecutionTrigger.BACKFILL:
            continue
        index = min(PLOT_BUCKETS - 1, int((started - start) / width))
        lags[index].append(max(0.0, (started - execution.scheduled_time).total_seconds()))
    points = [
        LagPoint(start + width * i, len(values), percentile(values, 0.5), percentile(values, 0.99))
        for i, values in enumerate(lags)
    ]
    top = max([p.p99 for p in points] + [0.001]) * 1.1

    def path(values: list[float]) -> str:
        step = Plot.WIDTH / (PLOT_BUCKETS - 1)
        return " ".join(
            f"{'M' if i == 0 else 'L'}{i * step:.1f},{Plot.HEIGHT - value / top * Plot.HEIGHT:.1f}"
            for i, value in enumerate(values)
        )

    return Plot(points, path([p.p50 for p in points]), path([p.p99 for p in points]), top)


@dataclass
class Overview:
    now: datetime
    replicas: list[Any]
    queued: int
    running: int
    lag_p50: float
    lag_p99: float
    lag_samples: int
    plot: Plot
    failures: list[Execution]
    failure_count: int
    next_runs: list[tuple[datetime, Schedule]]
    namespaces: list[str]
    job_count: int


async def overview(readers: Readers) -> Overview:
    store = readers.store
    status = await store.cluster_status(timedelta(hours=1))
    now = status.now
    spaces = await namespaces(store)
    hour_ago, day_ago = now - timedelta(hours=1), now - timedelta(hours=24)

    async def of_namespace(namespace: str) -> tuple[list[Execution], list[Execution], list[Schedule]]:
        plotted = await readers.executions.list_page(
            namespace, Page(PLOT_EXECUTIONS_PER_NAMESPACE), ExecutionFilter(scheduled_after=hour_ago)
        )
        failed = await readers.executions.list_page(
            namespace,
            Page(FAILURES_SHOWN + 1),
            ExecutionFilter(states=FAILED_STATES, scheduled_after=day_ago),
        )
        schedules = await _all_pages(
            lambda page: readers.schedules.list_page(namespace, page),
            MAX_SCHEDULES_SCANNED // max(1, len(spaces)),
        )
        return plotted.items, failed.items, schedules

    read = await asyncio.gather(*(of_namespace(n) for n in spaces))
    counts = await store.namespace_counts()
    plotted = [e for r in read for e in r[0]]
    failures = sorted(
        (e for r in read for e in r[1]), key=lambda e: e.end_time or e.scheduled_time, reverse=True
    )
    upcoming = sorted(
        ((s.next_fire_time, s) for r in read for s in r[2] if s.next_fire_time is not None and not s.paused),
        key=lambda pair: pair[0],
    )
    return Overview(
        now=now,
        replicas=[(r, r.alive(now)) for r in status.replicas],
        queued=status.queued,
        running=status.running,
        lag_p50=status.lag.p50,
        lag_p99=status.lag.p99,
        lag_samples=status.lag.samples,
        plot=lag_plot(plotted, now),
        failures=failures[:FAILURES_SHOWN],
        failure_count=len(failures),
        next_runs=upcoming[:NEXT_RUNS_SHOWN],
        namespaces=spaces,
        job_count=sum(counts[n][0] for n in spaces),
    )


@dataclass
class JobRow:
    job: Job
    runs: list[Execution]  # newest first
    success: float | None  # percent of finished runs that succeeded
    last_state: str


@dataclass
class JobList:
    rows: list[JobRow]
    namespaces: list[str]
    truncated: bool
    namespace: str = ""
    label: str = ""
    state: str = ""
    states: list[str] = field(default_factory=list)


def _label_matches(job: Job, label: str) -> bool:
    if not label:
        return True
    key, sep, value = label.partition("=")
    if not sep:
        return key.strip() in job.labels
    return job.labels.get(key.strip()) == value.strip()


def _last_state(job: Job, runs: list[Execution]) -> str:
    if runs:
        return runs[0].state.value
    if job.stats is not None and job.stats.last_run_state is not None:
        return job.stats.last_run_state.value
    return "never"


async def job_list(readers: Readers, namespace: str, label: str, state: str) -> JobList:
    spaces = await namespaces(readers.store)
    chosen = [namespace] if namespace in spaces else spaces
    rows: list[JobRow] = []
    truncated = False
    for space in chosen:
        if len(rows) >= MAX_JOBS_SHOWN:
            truncated = True
            break
        jobs = await _all_pages(
            lambda page, space=space: readers.jobs.list_page(space, page), MAX_JOBS_SHOWN - len(rows) + 1
        )
        if len(jobs) > MAX_JOBS_SHOWN - len(rows):
            truncated = True
            jobs = jobs[: MAX_JOBS_SHOWN - len(rows)]
        recent = await readers.executions.list_page(space, Page(RECENT_RUNS_PER_NAMESPACE), ExecutionFilter())
        by_job: dict[str, list[Execution]] = {}
        for execution in recent.items:
            by_job.setdefault(execution.job_id, []).append(execution)
        for job in jobs:
            if not _label_matches(job, label):
                continue
            runs = by_job.get(job.id, [])[:CELLS_PER_JOB]
            last = _last_state(job, runs)
            if state and last != state:
                continue
            stats = job.stats
            finished = (stats.succeeded + stats.failed) if stats else 0
            success = 100.0 * stats.succeeded / finished if stats and finished else None
            rows.append(JobRow(job, runs, success, last))
    states = [s.value for s in ExecutionState] + ["never"]
    return JobList(rows, spaces, truncated, namespace, label, state, states)


@dataclass
class ScheduleView:
    schedule: Schedule
    fire_times: list[PreviewTime]
    error: str = ""


@dataclass
class JobPage:
    job: Job
    schedules: list[ScheduleView]
    executions: list[Execution]
    definition: str
    success: float | None


def definition(job: Job) -> str:
    """The job as its owner wrote it, without what reads never return (the callback's secret)."""
    document: dict[str, Any] = {
        "executor": job.executor,
        "parameters": job.parameters,
    }
    if job.description:
        document["description"] = job.description
    if job.timeout is not None:
        document["timeout"] = f"{job.timeout.total_seconds():g}s"
    if job.retry_policy is not None:
        policy = job.retry_policy
        document["retry_policy"] = {
            "max_attempts": policy.max_attempts,
            "initial_backoff": f"{policy.initial_backoff.total_seconds():g}s",
            "backoff_multiplier": policy.backoff_multiplier,
            "max_backoff": f"{policy.max_backoff.total_seconds():g}s",
        }
    if job.max_concurrency:
        document["max_concurrency"] = job.max_concurrency
    if job.dependents:
        document["dependents"] = [{"job": d.job_id, "condition": d.condition.value} for d in job.dependents]
    if job.callback is not None:
        document["callback"] = {"url": job.callback.url, "states": [s.value for s in job.callback.states]}
    if job.labels:
        document["labels"] = job.labels
    if job.arguments_schema is not None:
        document["arguments_schema"] = job.arguments_schema
    return json.dumps(document, indent=2, sort_keys=False, default=str)


async def job_page(readers: Readers, namespace: str, job_id: str) -> JobPage:
    job = await readers.jobs.get(namespace, job_id)
    schedules = await _all_pages(
        lambda page: readers.schedules.list_page(namespace, page, job_id=job_id), 100
    )
    views = []
    for schedule in schedules:
        try:
            times = (
                []
                if schedule.paused
                else await readers.schedules.preview(schedule, None, FIRE_TIMES_PER_SCHEDULE)
            )
            views.append(ScheduleView(schedule, times))
        except Exception as error:  # a preview that cannot be computed is shown as such
            views.append(ScheduleView(schedule, [], str(error)))
    executions = await readers.executions.list_page(
        namespace, Page(EXECUTIONS_ON_JOB_PAGE), ExecutionFilter(job_id=job_id)
    )
    stats = job.stats
    finished = (stats.succeeded + stats.failed) if stats else 0
    success = 100.0 * stats.succeeded / finished if stats and finished else None
    return JobPage(job, views, executions.items, definition(job), success)


@dataclass
class ExecutionPage:
    execution: Execution
    attempts: list[Execution]
    output: str
    output_offset: int
    steps: list[tuple[str, datetime | None]]


async def output_of(readers: Readers, namespace: str, execution_id: str) -> tuple[str, int]:
    """The output captured so far and the byte offset after it (bounded by the capture limit)."""
    pieces: list[str] = []
    offset = 0
    async for piece in readers.executions.output(namespace, execution_id, 0, False):
        pieces.append(piece.data)
        offset = piece.offset + len(piece.data.encode())
    return "".join(pieces), offset


async def execution_page(readers: Readers, namespace: str, execution_id: str) -> ExecutionPage:
    execution = await readers.executions.get(namespace, execution_id)
    first = execution.first_attempt_id or execution.id
    same_job = await readers.executions.list_page(
        namespace, Page(200), ExecutionFilter(job_id=execution.job_id)
    )
    attempts = sorted(
        (e for e in same_job.items if (e.first_attempt_id or e.id) == first),
        key=lambda e: e.attempt,
    )
    if not any(e.id == execution.id for e in attempts):
        attempts.append(execution)
    output, offset = await output_of(readers, namespace, execution_id)
    steps: list[tuple[str, datetime | None]] = [("queued", execution.create_time)]
    if execution.start_time is not None:
        steps.append(("running", execution.start_time))
    if execution.ended:
        steps.append((execution.state.value, execution.end_time))
    return ExecutionPage(execution, attempts, output, offset, steps)
