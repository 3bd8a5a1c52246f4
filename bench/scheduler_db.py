"""The scheduler benchmark's direct database access: bulk-stored schedules and the executions
they fired, read straight from PostgreSQL (fine for a benchmark, not for a client)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from scheduler_api import JOB_ID, NAMESPACE

from cronwire_server.core.model import CronSpec, Schedule
from cronwire_server.storage.records import schedule_fields
from cronwire_server.storage.tables import schedules as schedules_table

POLL_INTERVAL_S = 0.2


def seed_schedules(url: str, count: int) -> int:
    """COPY `count` schedules of the noop job (which must exist), all due next New Year.

    The rows are what CreateSchedule stores (built with the server's own record
    mapping), so the server reads them like any other.
    """
    now = datetime.now(UTC)
    far = datetime(now.year + 1, 1, 1, tzinfo=UTC)
    template = Schedule(NAMESPACE, "", JOB_ID, CronSpec("0 0 1 1 *"), next_fire_time=far)
    values: dict[str, Any] = {
        **schedule_fields(template),
        "namespace": NAMESPACE,
        "create_time": now,
        "update_time": now,
        "etag": "bench",
    }
    columns = [c.name for c in schedules_table.c]
    fixed = {k: Jsonb(v) if isinstance(v, dict) else v for k, v in values.items()}
    statement = f"COPY schedules ({', '.join(columns)}) FROM STDIN"
    with psycopg.connect(url) as conn, conn.cursor() as cursor, cursor.copy(statement) as copy:
        for n in range(count):
            fixed["id"] = f"stored-{n:07d}"
            copy.write_row([fixed[c] for c in columns])
    vacuum(url, "schedules")
    return count


def vacuum(url: str, table: str) -> None:
    """VACUUM ANALYZE after a bulk load, so autovacuum does not do it during a measurement."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))


@dataclass
class Executions:
    """The executions the schedules fired, in seconds since the epoch (UTC)."""

    scheduled: list[float] = field(default_factory=list)
    queued: list[float] = field(default_factory=list)  # create_time: when the dispatcher wrote it
    started: list[float] = field(default_factory=list)
    succeeded_ended: list[float] = field(default_factory=list)  # end_time of those that SUCCEEDED
    states: Counter[str] = field(default_factory=Counter)
    workers: Counter[str] = field(default_factory=Counter)


def wait_until_ended(url: str, expected: int, deadline: float) -> int:
    """Poll until `expected` executions ended or the monotonic `deadline`; returns how many ended."""
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT count(*) FROM executions WHERE end_time IS NOT NULL").fetchone()
            ended = int(row[0]) if row else 0
            if ended >= expected or time.monotonic() >= deadline:
                return ended
            time.sleep(POLL_INTERVAL_S)


def read_executions(url: str) -> Executions:
    found = Executions()
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT scheduled_time, create_time, start_time, end_time, state, worker FROM executions"
            " WHERE trigger = 'schedule'"
        ).fetchall()
    for scheduled, created, started, ended, state, worker in rows:
        found.states[state] += 1
        if started is None:
            continue
        found.scheduled.append(scheduled.timestamp())
        found.queued.append(created.timestamp())
        found.started.append(started.timestamp())
        if state == "succeeded":
            found.succeeded_ended.append(ended.timestamp())
        found.workers[worker] += 1
    return found


def backend_pids(url: str) -> list[int]:
    """The PostgreSQL backends connected to this URL's database (other than this query's)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [int(r[0]) for r in rows]


def reset_statements(url: str) -> bool:
    """Zero pg_stat_statements' figures of this URL's database; False where the extension is not
    loaded (it needs `shared_preload_libraries = pg_stat_statements`)."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute(
                "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database"
                " WHERE datname = current_database()), 0)"
            )
    except psycopg.Error:
        return False
    return True


def top_statements(url: str, limit: int) -> list[dict[str, Any]]:
    """The statements of this URL's database that took PostgreSQL the most time since the reset,
    running and planning (statements that triggers and functions ran included, so times nest;
    planning is counted only where the server sets `pg_stat_statements.track_planning`)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT calls, plans, rows, total_exec_time, total_plan_time, wal_bytes,"
            " regexp_replace(query, '\\s+', ' ', 'g')"
            " FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database"
            " WHERE datname = current_database())"
            " ORDER BY total_exec_time + total_plan_time DESC LIMIT %s",
            (limit,),
        ).fetchall()
    return [
        {
            "calls": calls,
            "plans": plans,
            "rows": n,
            "ms": float(ms),
            "plan_ms": float(plan_ms),
            "wal_bytes": int(wal),
            "query": query,
        }
        for calls, plans, n, ms, plan_ms, wal, query in rows
    ]
