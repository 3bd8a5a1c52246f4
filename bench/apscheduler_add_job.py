"""CreateJob's baseline: APScheduler 3's `add_job` on a SQLAlchemyJobStore in PostgreSQL.

`api_throughput.py` runs this file as its own process, on a fresh database:

    python bench/apscheduler_add_job.py --database-url URL --threads 64 --warmup 2 --seconds 10

It starts a BackgroundScheduler, paused (nothing runs; `add_job` stores each job at once, in its
own transaction, as a web app's endpoint would), prints `ready`, and waits for a line on stdin.
Then `--threads` threads call `add_job` for `--warmup` + `--seconds`, each call a new job id with
an hourly interval trigger and the noop function by textual reference, and it prints one JSON
line: the calls that ended inside the measured window, the errors among them, their latencies.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler

# The job function, by textual reference as a persistent job store requires.
FUNC_REF = "apscheduler_add_job:noop"


def noop() -> None:
    """The job; never run here (the scheduler is paused)."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="the SQLAlchemy URL of a fresh database")
    parser.add_argument("--threads", type=int, default=64, help="callers at once (default 64)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default 2)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds (default 10)")
    return parser.parse_args(argv)


def measure(scheduler: BackgroundScheduler, threads: int, warmup: float, seconds: float) -> dict[str, Any]:
    """Calls of `add_job` from `threads` threads; those that ended inside the measured window."""
    start = time.perf_counter()
    window = (start + warmup, start + warmup + seconds)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def caller(index: int) -> None:
        n = 0
        while (began := time.perf_counter()) < window[1]:
            error = None
            try:
                scheduler.add_job(FUNC_REF, "interval", hours=1, id=f"t{index}-{n}")
            except Exception as exc:  # a failed call counts as an error, as a failed RPC does
                error = f"{type(exc).__name__}: {exc}"
            ended = time.perf_counter()
            n += 1
            if window[0] <= ended <= window[1]:
                with lock:
                    if error is None:
                        latencies.append((ended - began) * 1000)
                    else:
                        errors.append(error)

    workers = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {
        "calls": len(latencies) + len(errors),
        "errors": len(errors),
        "seconds": seconds,
        "latencies_ms": latencies,
        "first_error": errors[0] if errors else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    scheduler = BackgroundScheduler(jobstores={"default": SQLAlchemyJobStore(url=args.database_url)})
    scheduler.start(paused=True)
    try:
        print("ready", flush=True)
        sys.stdin.readline()
        figures = measure(scheduler, args.threads, args.warmup, args.seconds)
        print(json.dumps(figures), flush=True)
    finally:
        scheduler.shutdown(wait=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
