"""Remote workers: noop executions per second through one replica, and dispatch-to-start latency.

    python bench/remote_workers.py            # add --json for one JSON object

It creates a fresh PostgreSQL database (`--database-url`, default
`$CRONWIRE_BENCH_DATABASE_URL`, else the local server as postgres), starts one server on it
(roles api and dispatcher: no local pool; `--server-arg` adds flags) and Python worker
processes (`cronwire worker run`) serving a queue with a task that does nothing but note when
it started. See bench/README.md, "Remote workers".

- throughput, 1 and 4 workers: `--backlog` executions are queued at once (one INSERT, as a
  dispatch would), then the workers are started; executions/s = how many SUCCEEDED divided by
  the time from the first start to the last end, both read from the database.
- latency: RunJob at `--rate` per second for `--seconds` with 4 workers connected; per
  execution, its due time (the RunJob's database time) to the moment the worker's function
  started (its result), p50 and p99.

Each phase also reports what an execution cost, which other load on the machine moves much
less than the rates: the server's CPU (microseconds per execution), PostgreSQL's (the whole
server's, an upper bound on a shared machine), and the SQL statements and round trips the
server sent (its /metrics), per execution. `--profile FILE` runs the server under cProfile and
writes its statistics to FILE when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa
from cpu import Meter, postgres_meter, process_tree_meter
from database import fresh_database, libpq_url
from google.protobuf import json_format
from sql_sent import metrics_port_file, sql_sent, with_metrics

from cronwire.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from cronwire_server.core.model import ExecutionTrigger
from cronwire_server.storage import sql_engine, sql_executions
from cronwire_server.storage.sql_store import normalize_url
from cronwire_server.storage.tables import executions

NAMESPACE = "bench"
QUEUE = "bench"
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TASKS = """
import time
import cronwire

worker = cronwire.Worker(queues=["bench"], concurrency=int(__import__("os").environ.get("CONCURRENCY", "64")))


@worker.task("noop")
def noop(**arguments):
    return {"started": time.time()}
"""


# The server under cProfile, timed by its CPU (wall time would count the other processes of a
# busy machine); the statistics are written to the file named by the first argument.
PROFILED = """
import cProfile, runpy, sys, time
out = sys.argv.pop(1)
sys.argv[0] = "cronwire_server"
profile = cProfile.Profile(time.process_time)
try:
    profile.runcall(runpy.run_module, "cronwire_server", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
profile.dump_stats(out)
"""


def start_server(
    url: str, workdir: Path, extra: list[str], profile: str = ""
) -> tuple[subprocess.Popen[bytes], str]:
    port_file = workdir / "server.port"
    log = (workdir / "server.log").open("wb")
    server = ["-c", PROFILED, profile] if profile else ["-m", "cronwire_server"]
    argv = [
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        url,
        "--port-file",
        str(port_file),
        "--roles",
        "api,dispatcher",
        *extra,
    ]
    process = subprocess.Popen(
        [sys.executable, *server, *with_metrics(argv, workdir, "server")],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    ready = (port_file, metrics_port_file(workdir, "server"))
    while not all(f.exists() and f.read_text().strip() for f in ready):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start:\n{(workdir / 'server.log').read_text()[-3000:]}")
        time.sleep(0.05)
    return process, f"127.0.0.1:{int(port_file.read_text())}"


def start_workers(target: str, workdir: Path, count: int, concurrency: int) -> list[subprocess.Popen[bytes]]:
    (workdir / "bench_tasks.py").write_text(TASKS)
    cronwire = str(Path(sys.executable).parent / "cronwire")
    started = []
    for number in range(count):
        log = (workdir / f"worker-{number}.log").open("wb")
        started.append(
            subprocess.Popen(
                [
                    cronwire,
                    "worker",
                    "run",
                    "bench_tasks:worker",
                    "--server",
                    target,
                    "--identity",
                    f"w{number}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env={**os.environ, "CONCURRENCY": str(concurrency), "PYTHONUNBUFFERED": "1"},
            )
        )
    return started


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def create_job(target: str) -> str:
    with grpc.insecure_channel(target) as channel:
        job = json_format.ParseDict(
            {"executor": "remote", "parameters": {"queue": QUEUE, "task": "noop"}}, job_pb2.Job()
        )
        request = job_service_pb2.CreateJobRequest(parent=f"namespaces/{NAMESPACE}", job_id="noop", job=job)
        return job_service_pb2_grpc.JobServiceStub(channel).CreateJob(request, timeout=30).job.name


def queue_backlog(engine: sa.Engine, count: int) -> None:
    with engine.begin() as conn:
        now = sql_engine.database_now(conn)
        rows = [
            sql_executions.new_row(
                namespace=NAMESPACE,
                job_id="noop",
                trigger=ExecutionTrigger.RUN_NOW,
                scheduled_time=now,
                now=now,
            )
            for _ in range(count)
        ]
        conn.execute(sa.insert(executions), rows)


def wait_for_ends(engine: sa.Engine, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            done = conn.execute(
                sa.select(sa.func.count()).where(
                    executions.c.state == "succeeded", executions.c.namespace == NAMESPACE
                )
            ).scalar_one()
        if done >= count:
            return
        time.sleep(0.1)
    raise SystemExit(f"only {done} of {count} executions ended within {timeout:.0f}s")


def clear(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(executions).where(executions.c.namespace == NAMESPACE))


class Costs:
    """What the phase's executions cost: CPU of the server and of PostgreSQL, SQL sent."""

    def __init__(self, meters: dict[str, Meter | None], metrics_port: int) -> None:
        self._meters = meters
        self._port = metrics_port
        self._before: dict[str, float | None] = {}

    def _snapshot(self) -> dict[str, float | None]:
        taken: dict[str, float | None] = {n: m() if m else None for n, m in self._meters.items()}
        taken.update(sql_sent([self._port]))
        return taken

    def start(self, workers: list[subprocess.Popen[bytes]] | None = None) -> None:
        """From now on; with `workers`, their CPU too (started before, so that their start-up
        does not count)."""
        meters = [process_tree_meter(w.pid) for w in workers or []]
        self._meters["workers"] = (lambda: sum(m() for m in meters if m is not None)) if meters else None
        self._before = self._snapshot()

    def per_execution(self, executions: int) -> dict[str, Any]:
        after = self._snapshot()
        costs: dict[str, Any] = {}
        for name, end in after.items():
            begin = self._before.get(name)
            if name not in ("statements", "round_trips") and (end is None or begin is None or not executions):
                costs[f"{name}_cpu_us_per_execution"] = None
            elif end is None or begin is None or not executions:
                costs[f"{name}_per_execution"] = None
            elif name in ("statements", "round_trips"):
                costs[f"{name}_per_execution"] = round((end - begin) / executions, 2)
            else:
                costs[f"{name}_cpu_us_per_execution"] = round((end - begin) / executions * 1e6)
        return costs


def throughput(
    engine: sa.Engine, target: str, workdir: Path, workers: int, backlog: int, costs: Costs
) -> dict[str, Any]:
    clear(engine)
    queue_backlog(engine, backlog)
    costs.start()
    processes = start_workers(target, workdir, workers, concurrency=64)
    try:
        wait_for_ends(engine, backlog, timeout=600)
        spent = costs.per_execution(backlog)
    finally:
        stop(processes)
    with engine.connect() as conn:
        first, last, done = conn.execute(
            sa.select(
                sa.func.min(executions.c.start_time), sa.func.max(executions.c.end_time), sa.func.count()
            ).where(executions.c.namespace == NAMESPACE, executions.c.state == "succeeded")
        ).one()
    seconds = (last - first).total_seconds()
    return {
        "workers": workers,
        "executions": done,
        "seconds": round(seconds, 3),
        "per_second": round(done / seconds, 1),
        **spent,
    }


async def paced_runs(target: str, job: str, rate: float, seconds: float) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        total = int(rate * seconds)
        started = time.monotonic()
        calls = []
        for number in range(total):
            delay = started + number / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            calls.append(
                asyncio.ensure_future(stub.RunJob(job_service_pb2.RunJobRequest(name=job), timeout=30))
            )
        await asyncio.gather(*calls)
        return total


def latency(
    engine: sa.Engine, target: str, job: str, workdir: Path, rate: float, seconds: float, costs: Costs
) -> dict[str, Any]:
    clear(engine)
    processes = start_workers(target, workdir, 4, concurrency=64)
    try:
        time.sleep(2)  # let the workers connect before the clock starts (not a test: a warm-up)
        costs.start(processes)
        total = asyncio.run(paced_runs(target, job, rate, seconds))
        wait_for_ends(engine, total, timeout=300)
        spent = costs.per_execution(total)
    finally:
        stop(processes)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(executions.c.due_time, executions.c.start_time, executions.c.result).where(
                executions.c.namespace == NAMESPACE, executions.c.state == "succeeded"
            )
        ).all()
    lags = sorted(
        (datetime.fromtimestamp(row.result["started"], UTC) - row.due_time).total_seconds() * 1000
        for row in rows
    )
    # The two parts: due to taken (the start recorded by the server), taken to started (pushed to
    # the worker, which calls the function).
    taken = sorted((row.start_time - row.due_time).total_seconds() * 1000 for row in rows)
    pushed = sorted(
        (datetime.fromtimestamp(row.result["started"], UTC) - row.start_time).total_seconds() * 1000
        for row in rows
    )
    return {
        "rate": rate,
        "executions": len(lags),
        "p50_ms": round(statistics.median(lags), 2),
        "p99_ms": round(_p99(lags), 2),
        "max_ms": round(lags[-1], 2),
        "taken_p50_ms": round(statistics.median(taken), 2),
        "taken_p99_ms": round(_p99(taken), 2),
        "pushed_p50_ms": round(statistics.median(pushed), 2),
        "pushed_p99_ms": round(_p99(pushed), 2),
        **spent,
    }


def _p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default=os.environ.get("CRONWIRE_BENCH_DATABASE_URL", DEFAULT_URL))
    parser.add_argument(
        "--server-arg", action="append", default=[], help="a flag for the server (repeatable)"
    )
    parser.add_argument(
        "--backlog", type=int, default=5000, help="executions queued for the throughput phases"
    )
    parser.add_argument(
        "--rate", type=float, default=200.0, help="RunJob calls per second in the latency phase"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency phase")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--phases", default="throughput,latency", help="which phases to run (comma-separated)"
    )
    parser.add_argument("--profile", default="", help="run the server under cProfile, statistics to FILE")
    args = parser.parse_args()
    report: dict[str, Any] = {"cpus": os.cpu_count(), "load_average_1m_before": round(os.getloadavg()[0], 2)}
    profile = str(Path(args.profile).resolve()) if args.profile else ""
    with fresh_database(args.database_url) as url, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server, target = start_server(url, workdir, args.server_arg, profile)
        engine = sa.create_engine(normalize_url(url))
        try:
            meters = {
                "server": process_tree_meter(server.pid),
                "postgres": postgres_meter(libpq_url(args.database_url)),
            }
            costs = Costs(meters, int(metrics_port_file(workdir, "server").read_text()))
            job = create_job(target)
            phases = args.phases.split(",")
            if "throughput" in phases:
                report["throughput"] = [
                    throughput(engine, target, workdir, n, args.backlog, costs) for n in (1, 4)
                ]
            if "latency" in phases:
                report["latency"] = latency(engine, target, job, workdir, args.rate, args.seconds, costs)
        finally:
            engine.dispose()
            stop([server])
    report["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"{report['cpus']} CPUs, load average {report['load_average_1m_before']:.2f} before, "
        f"{report['load_average_1m_after']:.2f} after"
    )
    for phase in report.get("throughput", []):
        print(
            f"throughput, {phase['workers']} worker(s): {phase['per_second']:.0f} executions/s "
            f"({phase['executions']} in {phase['seconds']:.1f}s)  target >= 1000/s with 4; "
            f"{_costs(phase)}"
        )
    lag = report.get("latency")
    if lag is None:
        return
    print(
        f"latency at {lag['rate']:.0f}/s: p50 {lag['p50_ms']:.1f} ms, p99 {lag['p99_ms']:.1f} ms, "
        f"max {lag['max_ms']:.1f} ms over {lag['executions']}  target p99 <= 20 ms; {_costs(lag)}"
    )
    print(
        f"  of which due -> taken p50 {lag['taken_p50_ms']:.1f} ms, p99 {lag['taken_p99_ms']:.1f} ms; "
        f"taken -> started on the worker p50 {lag['pushed_p50_ms']:.1f} ms, p99 {lag['pushed_p99_ms']:.1f} ms"
    )


def _costs(phase: dict[str, Any]) -> str:
    """A phase's costs per execution, as one line."""

    def shown(key: str, unit: str) -> str:
        value = phase.get(key)
        return "-" if value is None else f"{value:g}{unit}"

    return (
        f"per execution: server {shown('server_cpu_us_per_execution', ' us')} CPU, "
        f"PostgreSQL {shown('postgres_cpu_us_per_execution', ' us')}, "
        f"workers {shown('workers_cpu_us_per_execution', ' us')}, "
        f"{shown('statements_per_execution', '')} statements, "
        f"{shown('round_trips_per_execution', '')} round trips"
    )


if __name__ == "__main__":
    main()
