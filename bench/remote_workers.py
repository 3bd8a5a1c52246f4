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
from database import fresh_database
from google.protobuf import json_format

from cronwire.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from cronwire_server.core.model import ExecutionTrigger
from cronwire_server.storage import sql_executions
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


def start_server(url: str, workdir: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port_file = workdir / "server.port"
    log = (workdir / "server.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cronwire_server",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            url,
            "--port-file",
            str(port_file),
            "--roles",
            "api,dispatcher",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text().strip():
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
        now = sql_executions.database_now(conn)
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


def throughput(engine: sa.Engine, target: str, workdir: Path, workers: int, backlog: int) -> dict[str, Any]:
    clear(engine)
    queue_backlog(engine, backlog)
    processes = start_workers(target, workdir, workers, concurrency=64)
    try:
        wait_for_ends(engine, backlog, timeout=600)
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
    engine: sa.Engine, target: str, job: str, workdir: Path, rate: float, seconds: float
) -> dict[str, Any]:
    clear(engine)
    processes = start_workers(target, workdir, 4, concurrency=64)
    try:
        time.sleep(2)  # let the workers connect before the clock starts (not a test: a warm-up)
        total = asyncio.run(paced_runs(target, job, rate, seconds))
        wait_for_ends(engine, total, timeout=300)
    finally:
        stop(processes)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(executions.c.due_time, executions.c.result).where(
                executions.c.namespace == NAMESPACE, executions.c.state == "succeeded"
            )
        ).all()
    lags = sorted(
        (datetime.fromtimestamp(row.result["started"], UTC) - row.due_time).total_seconds() * 1000
        for row in rows
    )
    return {
        "rate": rate,
        "executions": len(lags),
        "p50_ms": round(statistics.median(lags), 2),
        "p99_ms": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 2),
        "max_ms": round(lags[-1], 2),
    }


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
    args = parser.parse_args()
    report: dict[str, Any] = {}
    with fresh_database(args.database_url) as url, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server, target = start_server(url, workdir, args.server_arg)
        engine = sa.create_engine(normalize_url(url))
        try:
            job = create_job(target)
            report["throughput"] = [throughput(engine, target, workdir, n, args.backlog) for n in (1, 4)]
            report["latency"] = latency(engine, target, job, workdir, args.rate, args.seconds)
        finally:
            engine.dispose()
            stop([server])
    if args.json:
        print(json.dumps(report))
        return
    for phase in report["throughput"]:
        print(
            f"throughput, {phase['workers']} worker(s): {phase['per_second']:.0f} executions/s "
            f"({phase['executions']} in {phase['seconds']:.1f}s)  target >= 1000/s with 4"
        )
    lag = report["latency"]
    print(
        f"latency at {lag['rate']:.0f}/s: p50 {lag['p50_ms']:.1f} ms, p99 {lag['p99_ms']:.1f} ms, "
        f"max {lag['max_ms']:.1f} ms over {lag['executions']}  target p99 <= 20 ms"
    )


if __name__ == "__main__":
    main()
