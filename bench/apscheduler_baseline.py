"""The baseline: APScheduler 3's BackgroundScheduler on a SQLAlchemyJobStore in PostgreSQL.

The systems cronwire replaces ran this design: one scheduler process owns the
job store, wakes up at the earliest next run time, loads the due jobs, hands
each to a thread pool and writes its next run time back, one job at a time.

The orchestrator (`scheduler_throughput.py`) seeds the job store with `seed`
(bulk COPY of the states `add_job` would store: setup is not measured), then
runs this file as its own process:

    python bench/apscheduler_baseline.py --database-url URL run --expect N
    python bench/apscheduler_baseline.py --database-url URL startup

`run` starts the scheduler, waits until N runs ended and prints one JSON line
with, per run, the scheduled time, the time the job function started (it returns
`time.time()`) and the time it ended (the executed-event listener). `startup`
prints `ready` once the scheduler has started and finished its first pass over
the job store. Both then wait for a line on stdin before they shut down.

Configuration (`make_scheduler`): a thread pool of THREADS (16, as cronwire's
default worker slots), misfire_grace_time None (no run is ever dropped as
late), coalesce off, max_instances high enough that no run is skipped.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
    JobExecutionEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from sqlalchemy import event as sa_event
from sqlalchemy.engine.interfaces import ExecuteStyle

THREADS = 16
MAX_INSTANCES = 100
TABLE = "apscheduler_jobs"
# The job function, by textual reference as a persistent job store requires.
FUNC_REF = "apscheduler_baseline:noop"


def noop() -> float:
    """The job: does nothing; returns when it started, for the listener to record."""
    return time.time()


def job_state(job_id: str, trigger: BaseTrigger, next_run_time: datetime) -> dict[str, Any]:
    """What `SQLAlchemyJobStore.add_job` pickles for a job (`Job.__getstate__`, version 1)."""
    return {
        "version": 1,
        "id": job_id,
        "func": FUNC_REF,
        "trigger": trigger,
        "executor": "default",
        "args": (),
        "kwargs": {},
        "name": "noop",
        "misfire_grace_time": None,
        "coalesce": False,
        "max_instances": MAX_INSTANCES,
        "next_run_time": next_run_time,
    }


def create_table(sqlalchemy_url: str) -> None:
    """The job store's table and index, as the job store itself creates them on start."""
    store = SQLAlchemyJobStore(url=sqlalchemy_url, tablename=TABLE)
    try:
        store.jobs_t.create(store.engine, checkfirst=True)
    finally:
        store.engine.dispose()


def seed(libpq_url: str, jobs: Iterable[tuple[str, BaseTrigger, datetime]]) -> int:
    """COPY jobs (id, trigger, next run time) into the job store; returns how many."""
    count = 0
    statement = f"COPY {TABLE} (id, next_run_time, job_state) FROM STDIN"
    with psycopg.connect(libpq_url) as conn, conn.cursor() as cursor, cursor.copy(statement) as copy:
        copy.set_types(["varchar", "float8", "bytea"])
        for job_id, trigger, next_run_time in jobs:
            state = pickle.dumps(job_state(job_id, trigger, next_run_time), pickle.HIGHEST_PROTOCOL)
            copy.write_row((job_id, next_run_time.timestamp(), state))
            count += 1
    # VACUUM ANALYZE after the bulk load, so autovacuum does not do it during a measurement.
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute(f"VACUUM ANALYZE {TABLE}")
    return count


class _Scheduler(BackgroundScheduler):  # type: ignore[misc]
    """Sets `first_pass` once the first look at the job store is done."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.first_pass = threading.Event()

    def _process_jobs(self) -> float | None:
        wait: float | None = super()._process_jobs()
        self.first_pass.set()
        return wait


def make_scheduler(sqlalchemy_url: str, threads: int) -> _Scheduler:
    return _Scheduler(
        jobstores={"default": SQLAlchemyJobStore(url=sqlalchemy_url, tablename=TABLE)},
        executors={"default": ThreadPoolExecutor(max_workers=threads)},
        job_defaults={"coalesce": False, "misfire_grace_time": None, "max_instances": MAX_INSTANCES},
        timezone=UTC,
    )


class _Recorder:
    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.runs: list[tuple[float, float, float]] = []
        self.failed: dict[str, int] = {"error": 0, "missed": 0, "max_instances": 0}
        self.done = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, event: JobEvent) -> None:
        ended = time.time()
        with self.lock:
            if event.code == EVENT_JOB_EXECUTED:
                assert isinstance(event, JobExecutionEvent)
                self.runs.append((event.scheduled_run_time.timestamp(), float(event.retval), ended))
            elif event.code == EVENT_JOB_ERROR:
                self.failed["error"] += 1
            elif event.code == EVENT_JOB_MISSED:
                self.failed["missed"] += 1
            else:
                self.failed["max_instances"] += 1
            if len(self.runs) + sum(self.failed.values()) >= self.expect:
                self.done.set()


class _SqlCounter:
    """The job store's SQL, as cronwire's statement hook counts its own: statements, and round
    trips (statements, plus the BEGIN psycopg sends before a transaction's first statement and
    its COMMIT or ROLLBACK; this engine does not autocommit)."""

    def __init__(self, engine: Any) -> None:
        self.statements = self.round_trips = 0
        sa_event.listen(engine, "before_cursor_execute", self._statement)
        for name in ("begin", "commit", "rollback"):
            sa_event.listen(engine, name, self._control)

    def _statement(self, *args: Any) -> None:
        executemany = args[5] and args[4].execute_style is ExecuteStyle.EXECUTEMANY
        self.statements += len(args[3]) if executemany else 1  # each parameter set
        self.round_trips += 1

    def _control(self, *_args: Any) -> None:
        self.round_trips += 1

    def figures(self) -> dict[str, int]:
        return {"statements": self.statements, "round_trips": self.round_trips}


def run(sqlalchemy_url: str, threads: int, expect: int, timeout: float) -> None:
    recorder = _Recorder(expect)
    scheduler = make_scheduler(sqlalchemy_url, threads)
    sql = _SqlCounter(scheduler._jobstores["default"].engine)
    scheduler.add_listener(
        recorder, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES
    )
    scheduler.start()
    finished = recorder.done.wait(timeout)
    with recorder.lock:
        result = {
            "finished": finished,
            "runs": list(recorder.runs),
            "failed": dict(recorder.failed),
            "sql": sql.figures(),
        }
    print(json.dumps(result), flush=True)
    # Still running, so the orchestrator can read the CPU time of every thread.
    sys.stdin.readline()
    scheduler.shutdown(wait=True)


def startup(sqlalchemy_url: str, threads: int) -> None:
    scheduler = make_scheduler(sqlalchemy_url, threads)
    scheduler.start()
    scheduler.first_pass.wait()
    print("ready", flush=True)
    sys.stdin.readline()
    scheduler.shutdown(wait=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="SQLAlchemy URL of the job store's database")
    parser.add_argument("--threads", type=int, default=THREADS, help="thread pool size (default %(default)s)")
    modes = parser.add_subparsers(dest="mode", required=True)
    run_mode = modes.add_parser("run", help="run until --expect runs ended; print them as JSON")
    run_mode.add_argument("--expect", type=int, required=True)
    run_mode.add_argument("--timeout", type=float, default=300.0)
    modes.add_parser("startup", help="print `ready` after the first pass, exit on a line on stdin")
    args = parser.parse_args(argv)
    if args.mode == "run":
        run(args.database_url, args.threads, args.expect, args.timeout)
    else:
        startup(args.database_url, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
