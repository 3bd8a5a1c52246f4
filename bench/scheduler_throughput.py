"""Scheduler throughput of cronwire on PostgreSQL, against APScheduler 3 on the same server.

    python bench/scheduler_throughput.py [--quick] [--json]

Scenarios, each on a fresh database of the same PostgreSQL server:

1. burst: 1,000 and 10,000 schedules of a noop job (created through
   CreateSchedule, a 6-field cron naming one second) all due at the same
   second, on one replica and on two (two server processes on one database).
   Read from the `executions` table once every one ended: fire lag
   (start_time - scheduled_time) p50/p99/max, fires/s and executions/s, and
   when the last one ended.
2. paced: 1,000 schedules firing every second (interval trigger), their start
   times 1 ms apart, so 1,000 ticks fall due every second, evenly, for
   --paced-seconds (5): fire lag.
3. start-up: time from spawning the server to its port file (written once it
   serves, health SERVING), its CPU time by then and its RSS 1 s later, on a
   database without schedules and on one with 100,000 stored (bulk COPY, due
   next New Year).
4. the baseline, APScheduler 3's BackgroundScheduler on a SQLAlchemyJobStore
   (`apscheduler_baseline.py`), on the same bursts, paced load and stored jobs.

A measurement, not a test: it exits 0 whether or not the targets are met.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import apscheduler_baseline as baseline
import grpc
import psycopg
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from database import fresh_database, libpq_url, wal_position
from scheduler_api import create_schedules, daily_at, every_second
from scheduler_db import (
    Executions,
    backend_pids,
    read_executions,
    reset_statements,
    seed_schedules,
    top_statements,
    wait_until_ended,
)
from servers import ServerFailed, ServerProcess, cpu_seconds, rss_bytes

import cronwire_server

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BASELINE_SCRIPT = Path(__file__).with_name("apscheduler_baseline.py")

# Targets.
FIRE_RATE_VS_BASELINE = 5.0
PACED_LAG_P99_MS = 10.0
EXECUTIONS_PER_S = 2000.0
# Per noop execution of the largest burst on one replica: what holds on a shared machine.
SERVER_CPU_MS_PER_RUN = 0.35
POSTGRES_CPU_MS_PER_RUN = 0.3
SQL_STATEMENTS_PER_RUN = 1.0
# "Flat": with the schedules stored, at most this much above the empty database.
FLAT_STARTUP_RATIO = 1.25
FLAT_RSS_RATIO = 1.10

# Setup: the first CreateSchedule rate guessed, before one is measured, and the
# share of the measured rate later fire times are planned with.
FIRST_CREATE_RATE_GUESS = 300.0
CREATE_RATE_MARGIN = 0.6
# Setup must end this long before the fire time, or the run is void (and made once more).
OVERRAN = "setup overran the fire time"
MIN_QUIET_S = 0.5
# What a failing server or database raises during a run: the run is reported as failed.
SETUP_ERRORS = (grpc.RpcError, psycopg.Error, OSError, RuntimeError, ValueError, subprocess.SubprocessError)
# The baseline process is started this long before its fire time (it starts in ~1 s).
BASELINE_START_S = 3.0
# Ended executions must appear within this, plus one second per 100 expected, after the last tick.
RUN_TIMEOUT_S = 30.0
RSS_SETTLE_S = 1.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a ~1-minute smoke run (1,000 due, 20,000 stored)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CRONWIRE_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="a PostgreSQL server to create the throwaway databases on "
        "(default: $CRONWIRE_BENCH_DATABASE_URL or %(default)s)",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra argument for cronwire_server, repeatable; write --server-arg=--flag=value",
    )
    parser.add_argument(
        "--misfire-grace-seconds",
        type=float,
        default=300.0,
        help="the servers' misfire grace (default %(default)s: no tick of a burst counts as "
        "misfired, as the baseline's misfire_grace_time is unlimited)",
    )
    parser.add_argument("--counts", help="schedules due at once per burst (default 1000,10000; quick 1000)")
    parser.add_argument("--replicas", default="1,2", help="replica counts per burst (default %(default)s)")
    parser.add_argument("--paced-rate", type=int, default=1000, help="due ticks per second (default 1000)")
    parser.add_argument("--paced-seconds", type=int, help="paced run length (default 5; quick 3)")
    parser.add_argument(
        "--stored", type=int, help="schedules stored for start-up (default 100000; quick 20000)"
    )
    parser.add_argument(
        "--startup-repeats", type=int, help="starts measured per database (default 3; quick 2)"
    )
    parser.add_argument("--lead", type=float, default=3.0, help="planned seconds from setup to fire time (3)")
    parser.add_argument("--threads", type=int, default=baseline.THREADS, help="baseline thread pool (16)")
    parser.add_argument(
        "--skip",
        default="",
        metavar="PARTS",
        help="comma-separated parts not to run: burst, paced, startup, baseline",
    )
    parser.add_argument(
        "--statements",
        type=int,
        default=0,
        metavar="N",
        help="print the N statements that took PostgreSQL the most time in each cronwire run "
        "(pg_stat_statements, which the PostgreSQL server must preload; their planning too where it "
        "sets pg_stat_statements.track_planning)",
    )
    parser.add_argument(
        "--loop-steps",
        type=float,
        default=0.0,
        metavar="MS",
        help="record every step of each cronwire server's event loop that took MS milliseconds or "
        "more during each cronwire run, and print how many, their CPU and where they stopped "
        "(bench/loop_steps)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="record py-spy profiles of every server during every cronwire burst and paced run into DIR",
    )
    parser.add_argument(
        "--profile-format",
        default="flamegraph",
        choices=["flamegraph", "raw", "speedscope"],
        help="py-spy format",
    )
    args = parser.parse_args(argv)
    args.skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    unknown = args.skip - {"burst", "paced", "startup", "baseline"}
    if unknown:
        parser.error(f"--skip: unknown parts {', '.join(sorted(unknown))}")
    args.counts = [int(c) for c in (args.counts or ("1000" if args.quick else "1000,10000")).split(",")]
    args.replicas = [int(r) for r in args.replicas.split(",")]
    args.paced_seconds = args.paced_seconds or (3 if args.quick else 5)
    args.stored = args.stored if args.stored is not None else (20_000 if args.quick else 100_000)
    args.startup_repeats = args.startup_repeats or (2 if args.quick else 3)
    return args


def source_version() -> str:
    """The commit the servers run, with "+changes" when their tree differs from it; the
    directory when cronwire_server comes from elsewhere (e.g. an exported tree on PYTHONPATH)."""
    package = Path(cronwire_server.__file__).resolve().parent
    root = Path(__file__).resolve().parent.parent
    if package != root / "server" / "cronwire_server":
        return f"from {package}"

    def git(*argv: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *argv], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--", "server") else "")


_STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


# Figures


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100), None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Run:
    """One burst or paced run of one system."""

    system: str  # cronwire | apscheduler
    kind: str  # burst | paced
    schedules: int
    replicas: int
    expected: int  # runs that should have ended
    fire_at: float = 0.0  # the (first) scheduled time, epoch seconds
    lags_ms: list[float] = field(default_factory=list)  # start - scheduled, per run that started
    queue_lags_ms: list[float] = field(default_factory=list)  # cronwire: execution written - scheduled
    last_start_s: float | None = None  # from fire_at
    last_end_s: float | None = None  # from fire_at, of the runs that succeeded
    succeeded: int = 0
    other_states: dict[str, int] = field(default_factory=dict)
    per_worker: list[int] = field(default_factory=list)
    # CPU seconds used from just before the fire time until every run ended, over `window_s`:
    # "scheduler" (the server processes or the APScheduler process) and "postgres" (their backends).
    cpu_s: dict[str, float] = field(default_factory=dict)
    # Seconds their threads were runnable but waited for a CPU (the machine was busy).
    wait_s: dict[str, float] = field(default_factory=dict)
    window_s: float = 0.0
    create_per_s: float | None = None
    # What the scheduler processes sent to PostgreSQL over the same window: "statements" and
    # "round_trips" (statements plus BEGIN/COMMIT), from their own statement hooks.
    sql: dict[str, float] = field(default_factory=dict)
    # Bytes PostgreSQL wrote to its WAL over the same window (`scheduler_db.wal_position`).
    wal_bytes: int | None = None
    # --statements: the statements that took PostgreSQL the most time over the same window.
    statements: list[dict[str, Any]] = field(default_factory=list)
    # --loop-steps: the servers' event-loop steps of at least that long over the same window.
    loop_steps: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    def cpu_pct(self) -> dict[str, float]:
        return {k: 100 * v / self.window_s for k, v in self.cpu_s.items()} if self.window_s else {}

    def wait_pct(self) -> dict[str, float]:
        return {k: 100 * v / self.window_s for k, v in self.wait_s.items()} if self.window_s else {}

    def cpu_ms_per_run(self) -> dict[str, float]:
        started = len(self.lags_ms)
        return {k: 1000 * v / started for k, v in self.cpu_s.items()} if started else {}

    def sql_per_run(self) -> dict[str, float]:
        started = len(self.lags_ms)
        return {k: v / started for k, v in self.sql.items()} if started else {}

    def wal_kib_per_run(self) -> float | None:
        started = len(self.lags_ms)
        return self.wal_bytes / 1024 / started if started and self.wal_bytes is not None else None

    @property
    def ran(self) -> bool:
        return bool(self.lags_ms)

    @property
    def label(self) -> str:
        return f"{self.system}-{self.kind}-{self.schedules}-{self.replicas}r"

    @property
    def fires_per_s(self) -> float | None:
        if self.kind != "burst" or not self.last_start_s:
            return None
        return len(self.lags_ms) / self.last_start_s

    @property
    def executions_per_s(self) -> float | None:
        if self.kind != "burst" or not self.last_end_s:
            return None
        return self.succeeded / self.last_end_s

    def figures(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "kind": self.kind,
            "schedules": self.schedules,
            "replicas": self.replicas,
            "expected": self.expected,
            "started": len(self.lags_ms),
            "succeeded": self.succeeded,
            "other_states": self.other_states,
            "lag_ms": {
                "p50": _round(percentile(self.lags_ms, 50)),
                "p99": _round(percentile(self.lags_ms, 99)),
                "max": _round(max(self.lags_ms, default=None)),
            },
            "queued_lag_ms": {
                "p50": _round(percentile(self.queue_lags_ms, 50)),
                "p99": _round(percentile(self.queue_lags_ms, 99)),
                "max": _round(max(self.queue_lags_ms, default=None)),
            },
            "fires_per_s": _round(self.fires_per_s, 1),
            "executions_per_s": _round(self.executions_per_s, 1),
            "last_start_s": _round(self.last_start_s, 3),
            "last_succeeded_s": _round(self.last_end_s, 3),
            "per_worker": self.per_worker,
            "cpu_pct_of_one_core": {k: _round(v, 1) for k, v in self.cpu_pct().items()},
            "cpu_ms_per_run": {k: _round(v, 3) for k, v in self.cpu_ms_per_run().items()},
            "sql_per_run": {k: _round(v, 2) for k, v in self.sql_per_run().items()},
            "wal_kib_per_run": _round(self.wal_kib_per_run(), 2),
            "waited_for_cpu_pct": {k: _round(v, 1) for k, v in self.wait_pct().items()},
            "window_s": _round(self.window_s, 3),
            "create_schedules_per_s": _round(self.create_per_s, 1),
            "statements": self.statements,
            "loop_steps": loop_steps_summary(self.loop_steps),
            "note": self.note,
        }


def fill_from_cronwire(run: Run, found: Executions) -> None:
    run.lags_ms = [(s - t) * 1000 for t, s in zip(found.scheduled, found.started, strict=True)]
    run.queue_lags_ms = [(q - t) * 1000 for t, q in zip(found.scheduled, found.queued, strict=True)]
    if found.started:
        run.last_start_s = max(found.started) - run.fire_at
    run.succeeded = len(found.succeeded_ended)
    if found.succeeded_ended:
        run.last_end_s = max(found.succeeded_ended) - run.fire_at
    run.other_states = {k: v for k, v in found.states.items() if k != "succeeded"}
    run.per_worker = sorted(found.workers.values(), reverse=True)


def fill_from_baseline(run: Run, result: dict[str, Any]) -> None:
    runs: list[list[float]] = result["runs"]
    run.lags_ms = [(started - scheduled) * 1000 for scheduled, started, _ in runs]
    run.succeeded = len(runs)
    if runs:
        run.last_start_s = max(r[1] for r in runs) - run.fire_at
        run.last_end_s = max(r[2] for r in runs) - run.fire_at
    run.other_states = {k: v for k, v in result["failed"].items() if v}
    run.sql = result.get("sql", {})
    run.per_worker = [len(runs)]
    if not result["finished"]:
        run.note = f"only {len(runs)} of {run.expected} runs ended in time"


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# CPU use over a run: the scheduler processes and the PostgreSQL backends serving them


class CpuMeter:
    def __init__(self, processes: dict[str, list[int]]) -> None:
        self._processes = processes
        self._start = time.monotonic()
        self._before = {pid: times for pids in processes.values() for pid in pids if (times := _cpu(pid))}

    def add(self, group: str, pids: Sequence[int]) -> None:
        """Processes that appeared during the run count in full."""
        known = self._processes.setdefault(group, [])
        known += [pid for pid in pids if pid not in known]

    def measure(self, run: Run) -> None:
        """Record the CPU and run-queue seconds of each group since the meter started, and the
        time passed. A process that ended meanwhile is left out (its times are gone with it)."""
        run.window_s = time.monotonic() - self._start
        run.cpu_s, run.wait_s = {}, {}
        for group, pids in self._processes.items():
            used = waited = 0.0
            for pid in pids:
                now = _cpu(pid)
                if now is not None:
                    before = self._before.get(pid, (0.0, 0.0))
                    used += now[0] - before[0]
                    waited += now[1] - before[1]
            run.cpu_s[group], run.wait_s[group] = used, waited


def _cpu(pid: int) -> tuple[float, float] | None:
    try:
        return cpu_seconds(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None


# Profiles


@contextmanager
def profiling(args: argparse.Namespace, label: str, pids: Sequence[int]) -> Iterator[None]:
    """py-spy record on every pid for the duration of the block (when --profile is given)."""
    if not args.profile:
        yield
        return
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    suffix = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}[args.profile_format]
    Path(args.profile).mkdir(parents=True, exist_ok=True)
    recorders = [
        subprocess.Popen(
            [
                *(py_spy, "record", "--nonblocking", "--rate", "250", "--pid", str(pid)),
                *("--format", args.profile_format, "-o", str(Path(args.profile) / f"{label}-{n}.{suffix}")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n, pid in enumerate(pids)
    ]
    try:
        yield
    finally:
        for recorder in recorders:
            recorder.send_signal(signal.SIGINT)
        for recorder in recorders:
            recorder.wait(30)


# --loop-steps: bench/loop_steps/sitecustomize.py, first on the servers' path, writes the steps.
LOOP_STEPS_DIR = Path(__file__).with_name("loop_steps")


def loop_steps_env(args: argparse.Namespace, workdir: Path, label: str) -> dict[str, str]:
    """The environment that has a server record its long event-loop steps (none without the flag)."""
    if not args.loop_steps:
        return {}
    path = os.pathsep.join(p for p in (str(LOOP_STEPS_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "PYTHONPATH": path,
        "CRONWIRE_BENCH_LOOP_STEPS": str(workdir / f"loop-steps-{label}"),
        "CRONWIRE_BENCH_LOOP_STEPS_MS": str(args.loop_steps),
    }


def read_loop_steps(workdir: Path, label: str, pids: Sequence[int], run: Run) -> list[dict[str, Any]]:
    """The steps the servers `pids` recorded over the run's measured window (from just before
    its fire time for `window_s`)."""
    start = run.fire_at - 0.3
    steps = []
    for pid in pids:
        path = workdir / f"loop-steps-{label}.{pid}"
        lines = path.read_text().splitlines() if path.exists() else []
        steps += [step for step in map(json.loads, lines) if start <= step["at"] <= start + run.window_s]
    return steps


def loop_steps_summary(steps: Sequence[dict[str, Any]], top: int = 5) -> dict[str, Any]:
    """How many steps, their time and CPU, and the places they stopped at most often."""
    where: dict[str, int] = {}
    for step in steps:
        where[step["stopped_at"]] = where.get(step["stopped_at"], 0) + 1
    took = sorted(step["ms"] for step in steps)
    return {
        "count": len(steps),
        "median_ms": _round(percentile(took, 50), 1),
        "max_ms": _round(max(took, default=None), 1),
        "cpu_pct": _round(100 * sum(s["cpu_ms"] for s in steps) / sum(took), 1) if took else None,
        "stopped_at": sorted(where.items(), key=lambda item: -item[1])[:top],
    }


# cronwire


def server_argv(args: argparse.Namespace, database_url: str) -> list[str]:
    return [
        *(sys.executable, "-m", "cronwire_server", "--listen", "127.0.0.1:0"),
        *("--database-url", database_url),
        *("--misfire-grace-seconds", str(args.misfire_grace_seconds)),
        *args.server_arg,
    ]


def with_metrics(argv: list[str], workdir: Path, name: str) -> list[str]:
    """`argv` serving metrics on a free port, written to a file named after the server."""
    return [
        *argv,
        "--metrics-address",
        "127.0.0.1:0",
        "--metrics-port-file",
        str(metrics_port_file(workdir, name)),
    ]


def metrics_port_file(workdir: Path, name: str) -> Path:
    return workdir / f"{name}.metrics-port"


SQL_COUNTERS = {
    "cronwire_sql_statements_total": "statements",
    "cronwire_sql_round_trips_total": "round_trips",
}


def sql_sent(ports: Sequence[int]) -> dict[str, float]:
    """The SQL the servers sent so far (their statement hooks, read from /metrics), summed."""
    total = dict.fromkeys(SQL_COUNTERS.values(), 0.0)
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                name, _, value = line.partition(" ")
                if name in SQL_COUNTERS:
                    total[SQL_COUNTERS[name]] += float(value)
    return total


def next_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0) + timedelta(seconds=1)


def sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


class Planner:
    """Plans fire times after setup, from the CreateSchedule rate measured before with as many
    replicas (else with any number, else a first guess)."""

    def __init__(self, lead: float) -> None:
        self.lead = lead
        self._rates: dict[int, float] = {}

    def create_rate(self, replicas: int) -> float:
        rate = self._rates.get(replicas) or min(self._rates.values(), default=FIRST_CREATE_RATE_GUESS)
        return CREATE_RATE_MARGIN * rate

    def fire_time(self, creates: int, replicas: int) -> datetime:
        setup = creates / self.create_rate(replicas) + self.lead
        return next_second(datetime.now(UTC) + timedelta(seconds=setup))

    def measured(self, replicas: int, per_s: float) -> None:
        if per_s > 0:
            self._rates[replicas] = per_s


def cronwire_run(
    args: argparse.Namespace, workdir: Path, planner: Planner, kind: str, count: int, replicas: int
) -> Run:
    progress(f"cronwire {kind}: {count} schedules, {replicas} replica(s)")
    run = _cronwire_run(args, workdir, planner, kind, count, replicas)
    if run.note.startswith(OVERRAN):
        progress(f"{run.note}; once more with {planner.create_rate(replicas):.0f}/s planned")
        run = _cronwire_run(args, workdir, planner, kind, count, replicas)
    return run


def _cronwire_run(
    args: argparse.Namespace, workdir: Path, planner: Planner, kind: str, count: int, replicas: int
) -> Run:
    run = Run("cronwire", kind, count, replicas, expected=count)
    if kind == "paced":
        run.expected = count * args.paced_seconds
    try:
        with fresh_database(args.database_url) as database_url, ExitStack() as stack:
            servers = [
                stack.enter_context(
                    ServerProcess(
                        with_metrics(server_argv(args, database_url), workdir, f"cronwire-{n}"),
                        workdir,
                        f"cronwire-{n}",
                        env=loop_steps_env(args, workdir, run.label),
                    )
                )
                for n in range(replicas)
            ]
            fire_at = planner.fire_time(count, replicas)
            run.fire_at = fire_at.timestamp()
            if kind == "burst":
                schedules = [daily_at(fire_at)] * count
                last_tick = fire_at
            else:
                end = fire_at + timedelta(seconds=args.paced_seconds, microseconds=-500)
                schedules = [every_second(fire_at + timedelta(seconds=n / count), end) for n in range(count)]
                last_tick = end
            created = create_schedules([s.address for s in servers], schedules)
            run.create_per_s = created.per_s
            planner.measured(replicas, created.per_s)
            if created.errors:
                run.note = f"{created.errors} CreateSchedule calls failed: {created.first_error}"
                return run
            if (fire_at - datetime.now(UTC)).total_seconds() < MIN_QUIET_S:
                run.note = f"{OVERRAN} (CreateSchedule {created.per_s:.0f}/s)"
                return run
            ports = [int(metrics_port_file(workdir, s.name).read_text()) for s in servers]
            _wait_and_measure(args, run, servers, ports, libpq_url(database_url), fire_at, last_tick)
            if args.loop_steps:
                run.loop_steps = read_loop_steps(workdir, run.label, [s.pid for s in servers], run)
            for server in servers:
                if server.stop():
                    progress(f"{server.name} exited uncleanly on SIGTERM\n{server.log_tail()}")
    except ServerFailed as error:
        run.note = "the server did not start"
        progress(str(error))
    except SETUP_ERRORS as error:
        run.note = f"failed: {_first_line(error)}"
        progress(f"cronwire {kind} run failed: {error}")
    return run


def _first_line(error: BaseException) -> str:
    if isinstance(error, grpc.RpcError):
        return f"{error.code().name}: {(error.details() or '').splitlines()[0][:160]}"
    return (str(error).splitlines() or [type(error).__name__])[0][:160]


def _wait_and_measure(
    args: argparse.Namespace,
    run: Run,
    servers: Sequence[ServerProcess],
    metrics_ports: Sequence[int],
    url: str,
    fire_at: datetime,
    last_tick: datetime,
) -> None:
    sleep_until(fire_at - timedelta(seconds=0.3))
    if args.statements and not reset_statements(url):
        progress("--statements: pg_stat_statements is not loaded by this PostgreSQL server")
        args.statements = 0
    sent_before = sql_sent(metrics_ports)
    wal_before = wal_position(url)
    meter = CpuMeter({"scheduler": [s.pid for s in servers], "postgres": backend_pids(url)})
    timeout = (last_tick - datetime.now(UTC)).total_seconds() + RUN_TIMEOUT_S + run.expected / 100
    with profiling(args, run.label, [s.pid for s in servers]):
        ended = wait_until_ended(url, run.expected, time.monotonic() + timeout)
        meter.add("postgres", backend_pids(url))
        meter.measure(run)
        run.wal_bytes = wal_position(url) - wal_before
    # A scrape costs the statements of one queue read: a handful against thousands.
    sent_after = sql_sent(metrics_ports)
    run.sql = {k: v - sent_before[k] for k, v in sent_after.items()}
    if args.statements:
        run.statements = top_statements(url, args.statements)
    if ended < run.expected:
        run.note = f"only {ended} of {run.expected} executions ended within {timeout:.0f} s"
    fill_from_cronwire(run, read_executions(url))


@dataclass
class Startup:
    """Starts of one system on one database; the fastest is the figure (the others met more
    interference from the rest of the machine)."""

    system: str
    stored: int
    seconds: list[float] = field(default_factory=list)  # spawn -> serving
    cpu_seconds: list[float] = field(default_factory=list)  # the process's CPU time by then
    # Seconds by then its threads were runnable but had no CPU (other work on the machine).
    waited_seconds: list[float] = field(default_factory=list)
    rss_bytes: list[int] = field(default_factory=list)  # RSS_SETTLE_S after serving

    @property
    def best_seconds(self) -> float:
        return min(self.seconds)

    @property
    def best_net_seconds(self) -> float:
        """Spawn -> serving less the wait for a CPU: what the target compares, since on a
        shared machine the wall time also measures everyone else."""
        return min(t - w for t, w in zip(self.seconds, self.waited_seconds, strict=True))

    @property
    def best_cpu_seconds(self) -> float:
        return min(self.cpu_seconds)

    @property
    def rss_mib(self) -> float:
        return statistics.median(self.rss_bytes) / 2**20

    def figures(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "stored": self.stored,
            "startup_s": round(self.best_seconds, 3),
            "startup_net_of_cpu_wait_s": round(self.best_net_seconds, 3),
            "startup_cpu_s": round(self.best_cpu_seconds, 3),
            "rss_mib": round(self.rss_mib, 1),
            "startup_s_each": [round(v, 3) for v in self.seconds],
            "startup_cpu_s_each": [round(v, 3) for v in self.cpu_seconds],
            "startup_cpu_wait_s_each": [round(v, 3) for v in self.waited_seconds],
            "rss_mib_each": [round(v / 2**20, 1) for v in self.rss_bytes],
        }


def _measure_starts(
    startup: Startup, repeats: int, start_once: Callable[[], tuple[float, tuple[float, float], int]]
) -> Startup:
    for _ in range(repeats):
        took, (cpu, waited), resident = start_once()
        startup.seconds.append(took)
        startup.cpu_seconds.append(cpu)
        startup.waited_seconds.append(waited)
        startup.rss_bytes.append(resident)
    return startup


def cronwire_startup(args: argparse.Namespace, workdir: Path) -> list[Startup]:
    progress(f"cronwire start-up: no schedules, then {args.stored} stored")
    with fresh_database(args.database_url) as database_url:
        argv = server_argv(args, database_url)
        # The first start applies the migrations; the noop job the stored schedules run is made here.
        with ServerProcess(argv, workdir, "cronwire-migrate") as server:
            create_schedules([server.address], [])

        def start_once() -> tuple[float, tuple[float, float], int]:
            with ServerProcess(argv, workdir, "cronwire-startup", poll_interval=0.002) as server:
                cpu = cpu_seconds(server.pid)
                time.sleep(RSS_SETTLE_S)
                return server.startup_seconds, cpu, rss_bytes(server.pid)

        empty = _measure_starts(Startup("cronwire", 0), args.startup_repeats, start_once)
        seed_schedules(libpq_url(database_url), args.stored)
        full = _measure_starts(Startup("cronwire", args.stored), args.startup_repeats, start_once)
    return [empty, full]


# The baseline


def baseline_jobs(
    kind: str, count: int, fire_at: datetime, seconds: int
) -> list[tuple[str, BaseTrigger, datetime]]:
    if kind == "burst":
        trigger = CronTrigger(second=fire_at.second, minute=fire_at.minute, hour=fire_at.hour, timezone=UTC)
        return [(f"job-{n:07d}", trigger, fire_at) for n in range(count)]
    end = fire_at + timedelta(seconds=seconds, microseconds=-500)
    jobs: list[tuple[str, BaseTrigger, datetime]] = []
    for n in range(count):
        start = fire_at + timedelta(seconds=n / count)
        jobs.append(
            (f"job-{n:07d}", IntervalTrigger(seconds=1, start_date=start, end_date=end, timezone=UTC), start)
        )
    return jobs


def baseline_command(args: argparse.Namespace, database_url: str, *mode: str) -> list[str]:
    return [
        sys.executable,
        str(BASELINE_SCRIPT),
        "--database-url",
        database_url,
        "--threads",
        str(args.threads),
        *mode,
    ]


def baseline_run(args: argparse.Namespace, kind: str, count: int) -> Run:
    progress(f"apscheduler {kind}: {count} jobs")
    run = Run("apscheduler", kind, count, 1, expected=count * (args.paced_seconds if kind == "paced" else 1))
    try:
        _baseline_run(args, run)
    except SETUP_ERRORS as error:
        run.note = f"failed: {_first_line(error)}"
        progress(f"apscheduler {kind} run failed: {error}")
    return run


def _baseline_run(args: argparse.Namespace, run: Run) -> None:
    kind, count = run.kind, run.schedules
    with fresh_database(args.database_url) as database_url:
        url = libpq_url(database_url)
        baseline.create_table(database_url)
        fire_at = next_second(datetime.now(UTC) + timedelta(seconds=BASELINE_START_S + count / 50_000))
        run.fire_at = fire_at.timestamp()
        baseline.seed(url, baseline_jobs(kind, count, fire_at, args.paced_seconds))
        if (fire_at - datetime.now(UTC)).total_seconds() < BASELINE_START_S - 1:
            run.note = OVERRAN
            return
        timeout = args.paced_seconds + RUN_TIMEOUT_S + run.expected / 100
        command = baseline_command(
            args, database_url, "run", "--expect", str(run.expected), "--timeout", str(timeout)
        )
        with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as process:
            assert process.stdin is not None
            assert process.stdout is not None
            sleep_until(fire_at - timedelta(seconds=0.3))
            wal_before = wal_position(url)
            meter = CpuMeter({"scheduler": [process.pid], "postgres": backend_pids(url)})
            line = process.stdout.readline()
            meter.add("postgres", backend_pids(url))
            meter.measure(run)
            run.wal_bytes = wal_position(url) - wal_before
            process.stdin.write("\n")
            process.stdin.close()
            process.wait()
        if not line:
            run.note = f"the baseline process failed (exit {process.returncode})"
            return
        fill_from_baseline(run, json.loads(line))


def baseline_startup(args: argparse.Namespace) -> list[Startup]:
    progress(f"apscheduler start-up: no jobs, then {args.stored} stored")
    with fresh_database(args.database_url) as database_url:
        baseline.create_table(database_url)
        command = baseline_command(args, database_url, "startup")

        def start_once() -> tuple[float, tuple[float, float], int]:
            spawned = time.monotonic()
            with subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            ) as process:
                assert process.stdin is not None
                assert process.stdout is not None
                if process.stdout.readline().strip() != "ready":
                    raise RuntimeError("the baseline scheduler did not start")
                took = time.monotonic() - spawned
                cpu = cpu_seconds(process.pid)
                time.sleep(RSS_SETTLE_S)
                resident = rss_bytes(process.pid)
                process.stdin.write("\n")
                process.stdin.close()
                process.wait()
            return took, cpu, resident

        empty = _measure_starts(Startup("apscheduler", 0), args.startup_repeats, start_once)
        far = datetime(datetime.now(UTC).year + 1, 1, 1, tzinfo=UTC)
        trigger = CronTrigger.from_crontab("0 0 1 1 *", timezone=UTC)
        baseline.seed(libpq_url(database_url), ((f"job-{n:07d}", trigger, far) for n in range(args.stored)))
        full = _measure_starts(Startup("apscheduler", args.stored), args.startup_repeats, start_once)
    return [empty, full]


# Targets and output


def _find(
    runs: Sequence[Run], system: str, kind: str, replicas: int = 1, count: int | None = None
) -> Run | None:
    matching = [
        r
        for r in runs
        if (r.system, r.kind, r.replicas) == (system, kind, replicas)
        and r.ran
        and (count is None or r.schedules == count)
    ]
    return max(matching, key=lambda r: r.schedules, default=None)


def targets(runs: Sequence[Run], startups: Sequence[Startup]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    cw = _find(runs, "cronwire", "burst")
    ap = _find(runs, "apscheduler", "burst", count=cw.schedules if cw else None)
    ratio = None
    if cw and ap and cw.fires_per_s and ap.fires_per_s:
        ratio = cw.fires_per_s / ap.fires_per_s
    found["fire_rate_vs_baseline"] = {
        "value": _round(ratio),
        "target": f">= {FIRE_RATE_VS_BASELINE:g}x",
        "pass": ratio is not None and ratio >= FIRE_RATE_VS_BASELINE,
        "detail": f"{cw.schedules if cw else '-'} due at once, one replica: cronwire "
        f"{_cell(cw.fires_per_s if cw else None, '.0f')}/s vs APScheduler "
        f"{_cell(ap.fires_per_s if ap else None, '.0f')}/s",
    }
    paced = _find(runs, "cronwire", "paced")
    p99 = percentile(paced.lags_ms, 99) if paced else None
    found["paced_lag_p99_ms"] = {
        "value": _round(p99),
        "target": f"<= {PACED_LAG_P99_MS:g} ms",
        "pass": p99 is not None and p99 <= PACED_LAG_P99_MS,
        "detail": f"{paced.schedules if paced else '-'} due ticks/s, one replica",
    }
    rate = cw.executions_per_s if cw else None
    found["executions_per_s"] = {
        "value": _round(rate, 1),
        "target": f">= {EXECUTIONS_PER_S:g}/s",
        "pass": rate is not None and rate >= EXECUTIONS_PER_S,
        "detail": f"{cw.schedules if cw else '-'} due at once, one replica, until the last SUCCEEDED",
    }
    per_run = cw.cpu_ms_per_run() if cw else {}
    sql = cw.sql_per_run() if cw else {}
    for key, value, limit, unit in (
        ("server_cpu_ms_per_run", per_run.get("scheduler"), SERVER_CPU_MS_PER_RUN, " ms"),
        ("postgres_cpu_ms_per_run", per_run.get("postgres"), POSTGRES_CPU_MS_PER_RUN, " ms"),
        ("sql_statements_per_run", sql.get("statements"), SQL_STATEMENTS_PER_RUN, ""),
    ):
        found[key] = {
            "value": _round(value, 3),
            "target": f"<= {limit:g}{unit}",
            "pass": value is not None and value <= limit,
            "detail": f"{cw.schedules if cw else '-'} due at once, one replica, per noop execution",
        }
    by_stored = {s.stored: s for s in startups if s.system == "cronwire"}
    if len(by_stored) == 2:
        empty, full = by_stored[0], by_stored[max(by_stored)]
        time_ratio = full.best_net_seconds / empty.best_net_seconds
        rss_ratio = full.rss_mib / empty.rss_mib
        found["startup_flat"] = {
            "value": round(time_ratio, 3),
            "target": f"<= {FLAT_STARTUP_RATIO:g}x",
            "pass": time_ratio <= FLAT_STARTUP_RATIO,
            "detail": f"{full.stored} stored vs none, net of CPU wait: {full.best_net_seconds:.2f} s vs "
            f"{empty.best_net_seconds:.2f} s",
        }
        found["rss_flat"] = {
            "value": round(rss_ratio, 3),
            "target": f"<= {FLAT_RSS_RATIO:g}x",
            "pass": rss_ratio <= FLAT_RSS_RATIO,
            "detail": f"{full.stored} stored vs none: {full.rss_mib:.1f} MiB vs {empty.rss_mib:.1f} MiB",
        }
    return found


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_report(
    args: argparse.Namespace,
    runs: Sequence[Run],
    startups: Sequence[Startup],
    goals: dict[str, dict[str, Any]],
    loadavg: float,
    version: str,
) -> None:
    server_args = " ".join([f"--misfire-grace-seconds={args.misfire_grace_seconds:g}", *args.server_arg])
    print(f"{os.cpu_count()} CPUs, load average {loadavg:.2f} before the run; noop jobs")
    print(f"cronwire {version} {server_args}; APScheduler 3, {args.threads} threads")
    print()
    print("Fire lag: start - scheduled time, ms. fire/s, exec/s: runs started, succeeded per second")
    print("from the due time. CPU: % of one core while the runs were due and ms per run, of the")
    print("scheduler processes and of the PostgreSQL backends serving them; wait %: how long the")
    print("scheduler's threads were runnable but had no CPU (other work on the machine).")
    print("sql/run, rt/run: SQL statements and round trips (statements, BEGIN, COMMIT) per run;")
    print("wal KiB/run: what PostgreSQL wrote to its write-ahead log per run (the whole server's).")
    print(
        f"{'system':<12}{'run':>13}{'repl':>5}{'p50':>8}{'p99':>8}{'max':>8}{'fire/s':>8}{'exec/s':>8}"
        f"{'last ok s':>10}{'cpu %':>7}{'ms/run':>7}{'wait %':>7}{'db %':>6}{'ms/run':>7}"
        f"{'sql/run':>8}{'rt/run':>7}{'wal KiB':>8}  notes"
    )
    for run in runs:
        what = f"{run.schedules} due" if run.kind == "burst" else f"{run.schedules}/s x {args.paced_seconds}s"
        pct, per_run, wait, sql = run.cpu_pct(), run.cpu_ms_per_run(), run.wait_pct(), run.sql_per_run()
        notes = [run.note] if run.note else []
        if run.other_states:
            notes.append(" ".join(f"{k}={v}" for k, v in run.other_states.items()))
        if run.replicas > 1 and run.per_worker:
            notes.append("split " + "/".join(str(n) for n in run.per_worker))
        if run.queue_lags_ms:
            notes.append(f"queued p99 {percentile(run.queue_lags_ms, 99):.0f} ms")
        print(
            f"{run.system:<12}{what:>13}{run.replicas:>5}"
            f"{_cell(percentile(run.lags_ms, 50), '.1f'):>8}{_cell(percentile(run.lags_ms, 99), '.1f'):>8}"
            f"{_cell(max(run.lags_ms, default=None), '.1f'):>8}"
            f"{_cell(run.fires_per_s, '.0f'):>8}{_cell(run.executions_per_s, '.0f'):>8}"
            f"{_cell(run.last_end_s if run.kind == 'burst' else None, '.2f'):>10}"
            f"{_cell(pct.get('scheduler'), '.0f'):>7}{_cell(per_run.get('scheduler'), '.2f'):>7}"
            f"{_cell(wait.get('scheduler'), '.0f'):>7}"
            f"{_cell(pct.get('postgres'), '.0f'):>6}{_cell(per_run.get('postgres'), '.2f'):>7}"
            f"{_cell(sql.get('statements'), '.2f'):>8}{_cell(sql.get('round_trips'), '.2f'):>7}"
            f"{_cell(run.wal_kib_per_run(), '.2f'):>8}  {'; '.join(notes)}"
        )
    for run in runs:
        if args.loop_steps and run.system == "cronwire" and run.window_s:
            summary = loop_steps_summary(run.loop_steps)
            print()
            median, longest = _cell(summary["median_ms"], ".1f"), _cell(summary["max_ms"], ".1f")
            print(
                f"{run.label}: event-loop steps of {args.loop_steps:g} ms or more: {summary['count']}"
                f" (median {median} ms, longest {longest}; on the CPU"
                f" {_cell(summary['cpu_pct'], '.0f')} % of their time), stopped at:"
            )
            for chain, count in summary["stopped_at"]:
                print(f"  {count:>5}  {chain[-160:]}")
        if run.statements:
            started = max(len(run.lags_ms), 1)
            print()
            # Planning is tracked only where the server sets pg_stat_statements.track_planning.
            planned = any(s["plan_ms"] for s in run.statements)
            unit = "ms running + planning (plans)" if planned else "ms running"
            print(f"{run.label}: the statements that took PostgreSQL the most time", end="")
            print(f" (per run: {unit}, KiB of WAL)")
            for s in run.statements:
                planning = f" + {s['plan_ms'] / started:.3f} ({s['plans']:>5})" if planned else ""
                print(
                    f"  {s['calls']:>7} calls {s['rows']:>7} rows {s['ms'] / started:>7.3f}{planning} ms"
                    f" {s['wal_bytes'] / 1024 / started:>6.2f} KiB  {s['query'][:100]}"
                )
    print()
    print(
        f"Start-up: spawn -> serving, fastest of {args.startup_repeats}; net: less the time it waited "
        f"for a CPU; cpu: its CPU time by then; RSS {RSS_SETTLE_S:g} s later, median"
    )
    print(f"{'system':<12}{'stored':>9}{'start s':>9}{'net s':>7}{'cpu s':>7}{'RSS MiB':>9}  each start s")
    for s in startups:
        each = " ".join(f"{v:.2f}" for v in s.seconds)
        figures = (
            f"{s.best_seconds:>9.2f}{s.best_net_seconds:>7.2f}{s.best_cpu_seconds:>7.2f}{s.rss_mib:>9.1f}"
        )
        print(f"{s.system:<12}{s.stored:>9}{figures}  {each}")
    print()
    quotients = ratios(runs)
    if quotients:
        print("cronwire (one replica) / APScheduler:")
        for q in quotients:
            parts = [f"{key} x{q[key]:g}" for key in list(q)[1:] if q[key] is not None]
            print(f"  {q['run']:<14} {', '.join(parts)}")
        print()
    for key, goal in goals.items():
        verdict = "PASS" if goal["pass"] else "MISS"
        value = goal["value"]
        print(f"{key:<24}{_cell(value, 'g'):>10}  target {goal['target']:<10} {verdict}  ({goal['detail']})")


def ratios(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """cronwire on one replica over APScheduler, per workload both ran."""
    found: list[dict[str, Any]] = []
    for run in runs:
        base = _find(runs, "apscheduler", run.kind, count=run.schedules)
        if run.system != "cronwire" or run.replicas != 1 or not run.ran or base is None:
            continue
        found.append(
            {
                "run": f"{run.schedules} due" if run.kind == "burst" else f"paced {run.schedules}/s",
                "lag_p99": _quotient(percentile(run.lags_ms, 99), percentile(base.lags_ms, 99)),
                "fires_per_s": _quotient(run.fires_per_s, base.fires_per_s),
                "executions_per_s": _quotient(run.executions_per_s, base.executions_per_s),
                "cpu_ms_per_run": _quotient(
                    run.cpu_ms_per_run().get("scheduler"), base.cpu_ms_per_run().get("scheduler")
                ),
                "db_cpu_ms_per_run": _quotient(
                    run.cpu_ms_per_run().get("postgres"), base.cpu_ms_per_run().get("postgres")
                ),
                "sql_per_run": _quotient(
                    run.sql_per_run().get("statements"), base.sql_per_run().get("statements")
                ),
                "wal_per_run": _quotient(run.wal_kib_per_run(), base.wal_kib_per_run()),
            }
        )
    return found


def _quotient(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 2)


def guarded(what: str, measure: Callable[[], list[Startup]]) -> list[Startup]:
    try:
        return measure()
    except (ServerFailed, *SETUP_ERRORS) as error:
        progress(f"{what} failed: {error}")
        return []


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    loadavg = os.getloadavg()[0]
    version = source_version()
    started = time.monotonic()
    runs: list[Run] = []
    startups: list[Startup] = []
    planner = Planner(args.lead)
    with tempfile.TemporaryDirectory(prefix="cronwire-sched-bench-") as tmp:
        workdir = Path(tmp)
        if "burst" not in args.skip:
            for count in args.counts:
                for replicas in args.replicas:
                    runs.append(cronwire_run(args, workdir, planner, "burst", count, replicas))
        if "paced" not in args.skip:
            runs.append(cronwire_run(args, workdir, planner, "paced", args.paced_rate, 1))
        if "startup" not in args.skip:
            startups += guarded("cronwire start-up", lambda: cronwire_startup(args, workdir))
    if "baseline" not in args.skip:
        if "burst" not in args.skip:
            runs += [baseline_run(args, "burst", count) for count in args.counts]
        if "paced" not in args.skip:
            runs.append(baseline_run(args, "paced", args.paced_rate))
        if "startup" not in args.skip:
            startups += guarded("apscheduler start-up", lambda: baseline_startup(args))
    goals = targets(runs, startups)
    if args.json:
        config = {
            "cpus": os.cpu_count(),
            "loadavg_1m_before": round(loadavg, 2),
            "server_source": version,
            "seconds": round(time.monotonic() - started, 1),
            "misfire_grace_seconds": args.misfire_grace_seconds,
            "server_args": args.server_arg,
            "apscheduler_threads": args.threads,
            "paced_seconds": args.paced_seconds,
        }
        output = {
            "config": config,
            "runs": [r.figures() for r in runs],
            "startup": [s.figures() for s in startups],
            "ratios_cronwire_over_apscheduler": ratios(runs),
            "targets": goals,
        }
        print(json.dumps(output, indent=2))
    else:
        print_report(args, runs, startups, goals, loadavg, version)
        progress(f"took {time.monotonic() - started:.0f} s")
    complete = all(r.ran for r in runs) and (
        "startup" in args.skip or len(startups) == 4 - 2 * ("baseline" in args.skip)
    )
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
