"""Executions in SQL: the dispatcher's and the workers' transactions, as synchronous
building blocks that `SqlStore` runs on its async driver.

Every function takes an open Connection inside a transaction and the database's
"now", so the decisions of a pass and the rows they write commit together.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from cronwire_server.core.model import (
    STATE_EVENTS,
    CallbackDelivery,
    CallbackState,
    DependencyCondition,
    EventType,
    Execution,
    ExecutionState,
    ExecutionTrigger,
    Job,
    JsonObject,
    SkipReason,
)
from cronwire_server.core.planning import PlannedRun, ScheduleActivity
from cronwire_server.executors.registry import REMOTE
from cronwire_server.executors.runtime import RunOutcome
from cronwire_server.storage import sql_events
from cronwire_server.storage.base import (
    ClaimedExecution,
    DispatchResult,
    ExecutionFilter,
    LeaseRenewal,
    Planner,
    RetryPlanner,
    StartNow,
)
from cronwire_server.storage.records import execution_from_row, job_from_record, schedule_from_record
from cronwire_server.storage.sql_driver import run_script
from cronwire_server.storage.sql_engine import PENDING_EVENTS, notify
from cronwire_server.storage.tables import execution_logs, executions, jobs, schedules

QUEUED, RUNNING = ExecutionState.QUEUED.value, ExecutionState.RUNNING.value
ACTIVE_STATES = (QUEUED, RUNNING)
# Columns a listing returns: everything but the (large) output.
LISTED_COLUMNS = [c for c in executions.c if c.name != "output"]


def new_execution_id(now: datetime) -> str:
    """Time-ordered: 12 hex digits of milliseconds since the epoch at `now` (the database's
    clock, so ids from every replica sort by when they were made), then 12 random ones."""
    return f"{int(now.timestamp() * 1000):012x}{secrets.token_hex(6)}"


def new_row(
    *,
    namespace: str,
    job_id: str,
    trigger: ExecutionTrigger,
    scheduled_time: datetime,
    now: datetime,
    schedule_id: str = "",
    due_time: datetime | None = None,
    arguments: JsonObject | None = None,
    state: ExecutionState = ExecutionState.QUEUED,
    skip_reason: SkipReason | None = None,
    error: str = "",
    attempt: int = 1,
    first_attempt_id: str = "",
    parent_execution_id: str = "",
    serial: bool = False,
    backfill_id: str = "",
    group_limit: int = 0,
) -> dict[str, Any]:
    """The values of a new execution row."""
    ended = state is not ExecutionState.QUEUED
    return {
        "namespace": namespace,
        "id": new_execution_id(now),
        "job_id": job_id,
        "schedule_id": schedule_id,
        "state": state.value,
        "trigger": trigger.value,
        "scheduled_time": scheduled_time,
        "due_time": due_time or scheduled_time,
        "create_time": now,
        "start_time": None,
        "end_time": now if ended else None,
        "attempt": attempt,
        "first_attempt_id": first_attempt_id,
        "parent_execution_id": parent_execution_id,
        "arguments": dict(arguments or {}),
        "exit_code": None,
        "http_status": None,
        "output": "",
        "output_truncated": False,
        "result": None,
        "error": error,
        "skip_reason": skip_reason.value if skip_reason else None,
        "worker": "",
        "lease_expires_at": None,
        "cancel_requested": False,
        "serial": serial,
        "backfill_id": backfill_id,
        "group_limit": group_limit,
        "callback_state": None,
        "callback_attempts": 0,
        "callback_http_status": None,
        "callback_error": "",
        "callback_last_time": None,
        "callback_next_time": None,
    }


def emit(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Queue events to be written just before this transaction commits (see SqlStore)."""
    conn.info.setdefault(PENDING_EVENTS, []).extend(rows)


def _insert_ignoring_duplicate_ticks(conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
    """Insert rows; a tick another replica recorded first is left alone. Returns the ids inserted."""
    if not rows:
        return set()
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(executions).on_conflict_do_nothing(
        index_elements=["namespace", "schedule_id", "scheduled_time"],
        index_where=sa.text("trigger = 'schedule'"),
    )
    return set(conn.execute(statement.returning(executions.c.id), rows).scalars())


def _locked(select: sa.Select[Any], conn: Connection, *tables: sa.Table) -> sa.Select[Any]:
    # Replicas share the work: each skips rows another has locked. SQLite has one writer anyway.
    if conn.dialect.name == "postgresql":
        return select.with_for_update(skip_locked=True, of=list(tables) or None)
    return select


def _compact(sql: str) -> str:
    """`sql` with its runs of whitespace made one space (its literals have none): psycopg caches
    the parsing of a statement only up to 4,096 bytes, and parses a longer one at every call."""
    assert "--" not in sql, "a comment would swallow the rest of the statement"
    return " ".join(sql.split())


# The dispatcher


def dispatch(
    conn: Connection, planner: Planner, limit: int, start: StartNow | None, now: datetime
) -> DispatchResult:
    read_at = time.monotonic()  # when `now` had just been read, for runs started on a timer
    # With a pool to start runs, ticks due within its look-ahead are taken too (see `StartNow`).
    horizon = now + start.ahead if start is not None else now
    query = (
        sa.select(schedules)
        .where(schedules.c.paused.is_(False), schedules.c.next_fire_time <= horizon)
        .order_by(schedules.c.next_fire_time)
        .limit(limit)
    )
    if start is not None:
        # The jobs come with the schedules: a run started at once needs its job, and whether
        # its start needs an admission decision (then it is queued as usual).
        query = query.add_columns(*(c.label(f"{_JOB_PREFIX}{c.name}") for c in jobs.c)).join(
            jobs,
            sa.and_(jobs.c.namespace == schedules.c.namespace, jobs.c.id == schedules.c.job_id),
            isouter=True,
        )
    due = conn.execute(_locked(query, conn, schedules)).all()
    if not due:
        return DispatchResult(0, 0, 0, more=False)
    activity = _activity(conn, [(r.namespace, r.id) for r in due])
    rows: list[dict[str, Any]] = []
    advances: list[dict[str, Any]] = []
    cancel: list[tuple[str, str]] = []
    to_start: dict[int, Job] = {}  # id() of a row -> its job
    room = start.count if start is not None else 0
    ahead_room = start.ahead_count if start is not None else 0
    for record in due:
        values = record._mapping
        schedule = schedule_from_record(values)
        schedule_activity = activity.get((schedule.namespace, schedule.id), ScheduleActivity())
        ahead = schedule.next_fire_time is not None and schedule.next_fire_time > now
        plan = planner(schedule, now, schedule_activity, horizon if ahead else now)
        ticks = [
            _tick_row(schedule.namespace, schedule.job_id, schedule.id, schedule.arguments, run, now)
            for run in plan.runs
        ]
        # A run that needs no admission decision; never a remote one (remote workers take those).
        startable = (
            start is not None
            and values[f"{_JOB_PREFIX}max_concurrency"] == 0
            and values[f"{_JOB_PREFIX}executor"] != REMOTE
        )
        chosen: list[dict[str, Any]] = []
        if ahead:
            if not (
                startable and not plan.cancel_running and _all_start(ticks, min(room, ahead_room), horizon)
            ):
                # Taken ahead only when the pool starts every tick itself at its due time; anything
                # else (a skip, a serial turn, a limit to admit by) is decided when it is due.
                continue
            chosen, room, ahead_room = ticks, room - len(ticks), ahead_room - len(ticks)
        elif startable:
            for row in ticks:
                if room > 0 and row["state"] == QUEUED and not row["serial"] and row["due_time"] <= now:
                    chosen.append(row)
                    room -= 1
        rows += ticks
        if chosen:
            assert start is not None
            job = job_from_record({c.name: values[f"{_JOB_PREFIX}{c.name}"] for c in jobs.c})
            for row in chosen:
                to_start[id(row)] = job
                # A tick taken ahead starts at its due time, by the pool's timer.
                begins = max(now, row["due_time"])
                lease = begins + start.lease
                row.update(state=RUNNING, worker=start.worker, start_time=begins, lease_expires_at=lease)
        advances.append(
            {"b_namespace": schedule.namespace, "b_id": schedule.id, "b_next": plan.next_fire_time}
        )
        if plan.cancel_running:
            cancel.append((schedule.namespace, schedule.id))
    if conn.dialect.name == "postgresql":
        inserted = _insert_ticks(conn, rows, now)
        rows = [r for r in rows if r["id"] in inserted]
    else:
        queued_events = [sql_events.execution_event(_as_queued(r), now) for r in rows if id(r) in to_start]
        inserted = _insert_ignoring_duplicate_ticks(conn, rows)
        rows = [r for r in rows if r["id"] in inserted]
        # A run started at once was queued first, as far as its events tell.
        emit(conn, [e for e in queued_events if e["resource"].rpartition("/")[2] in inserted])
        emit(conn, [sql_events.execution_event(r, now) for r in rows])
    started = [r for r in rows if id(r) in to_start]
    _advance(conn, advances)
    if cancel:
        # Locked in primary-key order like every multi-row change of executions (see `_held`).
        running = (
            sa.select(executions.c.namespace, executions.c.id)
            .where(
                sa.tuple_(executions.c.namespace, executions.c.schedule_id).in_(cancel),
                executions.c.state == RUNNING,
            )
            .order_by(executions.c.namespace, executions.c.id)
            .with_for_update(of=executions)
        )
        conn.execute(
            sa.update(executions)
            .where(sa.tuple_(executions.c.namespace, executions.c.id).in_(running))
            .values(cancel_requested=True)
        )
    queued = sum(1 for r in rows if r["state"] == QUEUED)
    if queued:
        notify(conn, "executions")
    return DispatchResult(
        len(due),
        queued + len(started),
        len(rows) - queued - len(started),
        more=len(due) == limit,
        started=tuple(ClaimedExecution(execution_from_row(r), to_start[id(r)]) for r in started),
        clock=(read_at, now),
    )


def _all_start(ticks: list[dict[str, Any]], room: int, horizon: datetime) -> bool:
    """Whether a pool with `room` free slots starts every one of `ticks` itself by `horizon`."""
    return len(ticks) <= room and all(
        row["state"] == QUEUED and not row["serial"] and row["due_time"] <= horizon for row in ticks
    )


def _as_queued(row: dict[str, Any]) -> dict[str, Any]:
    """A run started by its dispatch as its QUEUED event tells it: first queued, as if claimed."""
    return {**row, "state": QUEUED, "worker": "", "start_time": None, "lease_expires_at": None}


# PostgreSQL: the ticks of a dispatch batch inserted in one statement built once (their values
# travel as arrays; the columns every tick shares are written here), a tick another replica
# recorded first left alone, and the events of those inserted written by a CTE of it: each in its
# state, and a run started at once (RUNNING) first as QUEUED, as if claimed.
_TICK_ARRAYS = {
    "namespace": "text",
    "id": "text",
    "job_id": "text",
    "schedule_id": "text",
    "state": "text",
    "scheduled_time": "timestamptz",
    "due_time": "timestamptz",
    "arguments": "text",
    "error": "text",
    "skip_reason": "text",
    "serial": "boolean",
    "worker": "text",
    "start_time": "timestamptz",
    "lease_expires_at": "timestamptz",
    "event_type": "text",
}
_TICK_COLUMNS = {
    **{name: f"t.{name}" for name in _TICK_ARRAYS if name not in ("arguments", "event_type")},
    "arguments": "CAST(t.arguments AS jsonb)",
    "trigger": f"'{ExecutionTrigger.SCHEDULE.value}'",
    "attempt": "1",
    "first_attempt_id": "''",
    "parent_execution_id": "''",
    "output": "''",
    "output_truncated": "false",
    "cancel_requested": "false",
    "create_time": ":now",
    "end_time": f"CASE WHEN t.state NOT IN ('{QUEUED}', '{RUNNING}') THEN CAST(:now AS timestamptz) END",
}
_QUEUED_SNAPSHOT = (
    "to_jsonb(i) - 'output' || jsonb_build_object("
    f"'state', '{QUEUED}', 'worker', '', 'start_time', NULL, 'lease_expires_at', NULL)"
)
_INSERT_TICKS = sa.text(
    _compact(
        f"""
WITH inserted AS (
    INSERT INTO executions ({", ".join(_TICK_COLUMNS)})
    SELECT {", ".join(_TICK_COLUMNS.values())}
    FROM unnest({", ".join(f"CAST(:{n}s AS {t}[])" for n, t in _TICK_ARRAYS.items())})
        WITH ORDINALITY AS t({", ".join(_TICK_ARRAYS)}, n)
    ORDER BY t.n
    ON CONFLICT (namespace, schedule_id, scheduled_time) WHERE trigger = '{ExecutionTrigger.SCHEDULE.value}'
    DO NOTHING
    RETURNING *
),
written AS (
    INSERT INTO events (type, namespace, resource, job_id, schedule_id, actor, time, snapshot)
    SELECT e.type, i.namespace, 'namespaces/' || i.namespace || '/executions/' || i.id, i.job_id,
           i.schedule_id, '', :now, jsonb_build_object('execution', e.snapshot)
    FROM inserted AS i
    JOIN unnest(CAST(:ids AS text[]), CAST(:event_types AS text[])) WITH ORDINALITY AS t(id, type, n)
        ON t.id = i.id
    CROSS JOIN LATERAL (
        SELECT '{EventType.EXECUTION_QUEUED.value}' AS type, {_QUEUED_SNAPSHOT} AS snapshot, 0 AS phase
        WHERE i.state = '{RUNNING}'
        UNION ALL
        SELECT t.type, to_jsonb(i) - 'output', 1
    ) AS e
    ORDER BY t.n, e.phase
)
SELECT id FROM inserted
"""
    )
)


def _insert_ticks(conn: Connection, rows: list[dict[str, Any]], now: datetime) -> set[str]:
    """PostgreSQL: insert a dispatch's ticks with their events (`_INSERT_TICKS`); the ids inserted."""
    if not rows:
        return set()
    params: dict[str, Any] = {f"{name}s": [r[name] for r in rows] for name in _TICK_ARRAYS if name in rows[0]}
    params["argumentss"] = [json.dumps(r["arguments"]) for r in rows]
    params["event_types"] = [STATE_EVENTS[ExecutionState(r["state"])].value for r in rows]
    params["now"] = now
    return set(conn.execute(_INSERT_TICKS, params).scalars())


# PostgreSQL: the next fire times of a dispatch batch in one statement (an executemany is one
# statement per schedule), built once. The rows are locked already, by the dispatch's SELECT.
_ADVANCE_MANY = sa.text(
    """
UPDATE schedules AS s SET next_fire_time = a.next
FROM unnest(CAST(:namespaces AS text[]), CAST(:ids AS text[]), CAST(:nexts AS timestamptz[]))
    AS a(namespace, id, next)
WHERE s.namespace = a.namespace AND s.id = a.id
"""
)
_ADVANCE = (
    sa.update(schedules)
    .where(schedules.c.namespace == sa.bindparam("b_namespace"), schedules.c.id == sa.bindparam("b_id"))
    .values(next_fire_time=sa.bindparam("b_next"))
)


def _advance(conn: Connection, advances: list[dict[str, Any]]) -> None:
    if not advances:
        return
    if len(advances) > 1 and conn.dialect.name == "postgresql":
        conn.execute(
            _ADVANCE_MANY,
            {
                "namespaces": [a["b_namespace"] for a in advances],
                "ids": [a["b_id"] for a in advances],
                "nexts": [a["b_next"] for a in advances],
            },
        )
    else:
        conn.execute(_ADVANCE, advances)


def _activity(conn: Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], ScheduleActivity]:
    counts = conn.execute(
        sa.select(executions.c.namespace, executions.c.schedule_id, executions.c.state, sa.func.count())
        .where(
            sa.tuple_(executions.c.namespace, executions.c.schedule_id).in_(keys),
            executions.c.state.in_(ACTIVE_STATES),
        )
        .group_by(executions.c.namespace, executions.c.schedule_id, executions.c.state)
    ).all()
    found: dict[tuple[str, str], Counter[str]] = {}
    for namespace, schedule_id, state, count in counts:
        found.setdefault((namespace, schedule_id), Counter())[state] = count
    return {key: ScheduleActivity(running=c[RUNNING], queued=c[QUEUED]) for key, c in found.items()}


def _tick_row(
    namespace: str, job_id: str, schedule_id: str, arguments: JsonObject, run: PlannedRun, now: datetime
) -> dict[str, Any]:
    skipped = run.skip_reason is not None
    return new_row(
        namespace=namespace,
        job_id=job_id,
        schedule_id=schedule_id,
        trigger=ExecutionTrigger.SCHEDULE,
        scheduled_time=run.tick,
        due_time=run.due_time,
        arguments=arguments,
        state=ExecutionState.SKIPPED if skipped else ExecutionState.QUEUED,
        skip_reason=run.skip_reason,
        error=run.note,
        serial=run.serial,
        now=now,
    )


# Workers


def claim(
    conn: Connection, worker: str, limit: int, lease: timedelta, namespace_limit: int, now: datetime
) -> list[ClaimedExecution]:
    """Start up to `limit` due executions; at most `namespace_limit` (if > 0) running per namespace."""
    query = (
        sa.select(executions, jobs.c.max_concurrency.label("job_max_concurrency"))
        .join(
            jobs,
            sa.and_(jobs.c.namespace == executions.c.namespace, jobs.c.id == executions.c.job_id),
            isouter=True,
        )
        .where(executions.c.state == QUEUED, executions.c.due_time <= now)
        # Remote runs are taken by remote workers (sql_remote), never by the local pool.
        .where(sa.func.coalesce(jobs.c.executor, "") != REMOTE)
        .order_by(executions.c.due_time)
    )
    if namespace_limit > 0:
        # Namespaces at their limit are left out here already, so that their backlog does not
        # fill the candidates and starve the other namespaces; `_admissible` counts exactly.
        full = _namespaces_at(conn, namespace_limit)
        if full:
            query = query.where(executions.c.namespace.not_in(full))
    # Extra candidates, so blocked serial or rate-limited ones do not starve runnable ones.
    candidates = _candidates(conn, query, limit * 2 + 16)
    if not candidates:
        return []
    accepted, orphans = _admissible(conn, candidates, namespace_limit)
    accepted = accepted[:limit]
    if orphans:
        conn.execute(
            sa.update(executions)
            .where(sa.tuple_(executions.c.namespace, executions.c.id).in_(orphans))
            .values(
                state=ExecutionState.FAILED.value, end_time=now, error="the job was deleted before it ran"
            )
        )
    if not accepted:
        return []
    claimed = conn.execute(
        sa.update(executions)
        .where(sa.tuple_(executions.c.namespace, executions.c.id).in_(accepted))
        .values(state=RUNNING, worker=worker, start_time=now, lease_expires_at=now + lease)
        .returning(*executions.c)
    ).all()
    emit(conn, [sql_events.execution_event(r._mapping, now) for r in claimed])
    job_keys = {(r.namespace, r.job_id) for r in claimed}
    job_rows = conn.execute(sa.select(jobs).where(sa.tuple_(jobs.c.namespace, jobs.c.id).in_(job_keys))).all()
    by_key = {(r.namespace, r.id): job_from_record(r._mapping) for r in job_rows}
    return [
        ClaimedExecution(execution_from_row(r._mapping), by_key[(r.namespace, r.job_id)])
        for r in sorted(claimed, key=lambda r: r.due_time)
    ]


# Claiming on PostgreSQL in ONE statement: the oldest due QUEUED executions, locked with SKIP
# LOCKED, those admitted started with this worker's lease, their events inserted by a CTE, their
# jobs read with them. Admission is decided in the statement, as `_admissible` decides it, stage
# by stage in due order (each stage ranks the candidates the stages before it let through):
#   - a serial execution starts only while nothing of its schedule runs, one per schedule;
#   - a backfill group's, a job's and (with a namespace limit) a namespace's running executions
#     plus the candidates ranked before it stay within the limit;
#   - an execution whose job is gone is FAILED.
# Only the later serial executions of a schedule are left out of the candidates (the earliest
# stands for them), so that a schedule's backlog of catch-ups does not fill them.
#
# Counts of RUNNING executions are only exact if no other claim admits on the same keys between
# this statement's snapshot and its commit. So a claim that admits ("admit" mode) runs under one
# transaction-scoped advisory lock, taken by a statement of its own sent in the same round trip
# (the simple query protocol runs them in one transaction, each with its own snapshot: the
# claim's is taken once the lock is held, after the previous admitting claim committed). A claim
# in plain mode starts only candidates that need no decision (no serial turn, no limit, job
# present) and holds no lock; it reports whether it left any, and then the store claims in admit
# mode until none is left.
_STARTED = ", ".join(f"s.{c.name}" for c in executions.c)
_JOB_PREFIX = "job__"
_CANDIDATE = (
    "namespace, id, job_id, schedule_id, serial, backfill_id, group_limit, due_time, scheduled_time, "
    "max_concurrency"
)
_ADMISSION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('cronwire:claim-admission'))"
_ORPHANED = "the job was deleted before it ran"


def _running_count(key: str, alias: str) -> str:
    return (
        f"(SELECT count(*) FROM executions AS r WHERE r.namespace = {alias}.namespace"
        f" AND r.{key} = {alias}.{key} AND r.state = '{RUNNING}')"
    )


def _order(alias: str) -> str:
    # The order candidates are admitted in: by due time, then tick (a backfill's ticks are all due
    # at once and run in tick order), then id.
    return f"{alias}.due_time, {alias}.scheduled_time, {alias}.id"


def _rank(partition: str, alias: str) -> str:
    return f"row_number() OVER (PARTITION BY {partition} ORDER BY {_order(alias)})"


def _claim_sql(*, limit: str, worker: str, lease: str, namespace_limit: str, admit: bool) -> str:
    """The claim statement; each argument but `admit` is an SQL expression (a bind parameter or a
    literal)."""
    if admit:
        decided = f"""
serial_turn AS (
    SELECT {_CANDIDATE},
           CASE WHEN c.serial AND c.schedule_id <> ''
                THEN {_rank("c.namespace, c.schedule_id", "c")} = 1
                     AND {_running_count("schedule_id", "c")} = 0
                ELSE true END AS ok
    FROM candidate AS c
    WHERE NOT c.orphan
),
group_room AS (
    SELECT {_CANDIDATE},
           CASE WHEN s.group_limit > 0 AND s.backfill_id <> ''
                THEN {_rank("s.namespace, s.backfill_id", "s")} + {_running_count("backfill_id", "s")}
                     <= s.group_limit
                ELSE true END AS ok
    FROM serial_turn AS s WHERE s.ok
),
job_room AS (
    SELECT {_CANDIDATE},
           CASE WHEN s.max_concurrency > 0
                THEN {_rank("s.namespace, s.job_id", "s")} + {_running_count("job_id", "s")}
                     <= s.max_concurrency
                ELSE true END AS ok
    FROM group_room AS s WHERE s.ok
),
namespace_room AS (
    SELECT {_CANDIDATE},
           CASE WHEN {namespace_limit} > 0
                THEN {_rank("s.namespace", "s")}
                     + (SELECT count(*) FROM executions AS r
                        WHERE r.namespace = s.namespace AND r.state = '{RUNNING}') <= {namespace_limit}
                ELSE true END AS ok
    FROM job_room AS s WHERE s.ok
),
admitted AS MATERIALIZED (
    SELECT namespace, id FROM namespace_room WHERE ok ORDER BY due_time, scheduled_time, id LIMIT {limit}
),
orphaned AS (
    UPDATE executions AS e
    SET state = '{ExecutionState.FAILED.value}', end_time = now(), error = '{_ORPHANED}'
    FROM candidate AS c
    WHERE c.orphan AND e.namespace = c.namespace AND e.id = c.id
),
"""
    else:  # only candidates that need no decision
        decided = f"""
admitted AS MATERIALIZED (
    SELECT namespace, id FROM candidate WHERE NOT restricted
    ORDER BY due_time, scheduled_time, id LIMIT {limit}
),
"""
    # Admitting, extra candidates, so that blocked ones do not starve runnable ones; plainly, each
    # row locked is one the claim may start (a claim's row locks are most of its database work).
    candidates = f"{limit} * 2 + 16" if admit else limit
    full = (
        f"""
      AND e.namespace NOT IN (
          SELECT r.namespace FROM executions AS r WHERE r.state = '{RUNNING}'
          GROUP BY r.namespace HAVING count(*) >= {namespace_limit})"""
        if namespace_limit != "0"
        else ""
    )
    return f"""
WITH picked AS MATERIALIZED (
    SELECT e.namespace, e.id, e.job_id, e.schedule_id, e.serial, e.backfill_id, e.group_limit, e.due_time,
           e.scheduled_time
    FROM executions AS e
    WHERE e.state = '{QUEUED}' AND e.due_time <= now()
      AND NOT EXISTS (SELECT 1 FROM jobs AS x WHERE x.namespace = e.namespace AND x.id = e.job_id
                      AND x.executor = '{REMOTE}')
      AND NOT (e.serial AND e.schedule_id <> '' AND EXISTS (
          SELECT 1 FROM executions AS q
          WHERE q.namespace = e.namespace AND q.schedule_id = e.schedule_id AND q.state = '{QUEUED}'
            AND ({_order("q")}) < ({_order("e")}))){full}
    ORDER BY e.due_time
    LIMIT {candidates}
    FOR UPDATE OF e SKIP LOCKED
),
candidate AS MATERIALIZED (
    SELECT p.*, j.max_concurrency, j.id IS NULL AS orphan,
           (p.serial AND p.schedule_id <> '') OR (p.group_limit > 0 AND p.backfill_id <> '')
           OR j.max_concurrency IS NULL OR j.max_concurrency > 0 OR {namespace_limit} > 0 AS restricted
    FROM picked AS p LEFT JOIN jobs AS j ON j.namespace = p.namespace AND j.id = p.job_id
),
{decided}verdict AS MATERIALIZED (
    SELECT coalesce(bool_or(restricted), false) AS restricted FROM candidate
),
started AS (
    UPDATE executions AS e
    SET state = '{RUNNING}', worker = {worker}, start_time = now(), lease_expires_at = now() + {lease}
    FROM admitted AS a
    WHERE e.namespace = a.namespace AND e.id = a.id
    RETURNING e.*
),
written AS (
    INSERT INTO events (type, namespace, resource, job_id, schedule_id, actor, time, snapshot)
    SELECT '{EventType.EXECUTION_STARTED.value}', namespace,
           'namespaces/' || namespace || '/executions/' || id, job_id, schedule_id, '', start_time,
           jsonb_build_object('execution', to_jsonb(started) - 'output')
    FROM started
    ORDER BY due_time
)
SELECT v.restricted, {_STARTED}, {", ".join(f"j.{c.name} AS {_JOB_PREFIX}{c.name}" for c in jobs.c)}
FROM verdict AS v
LEFT JOIN (started AS s JOIN jobs AS j ON j.namespace = s.namespace AND j.id = s.job_id) ON true
ORDER BY s.due_time
"""


# Plain mode, built once (psycopg prepares it): starts only candidates that need no decision.
CLAIM_BATCH = sa.text(
    _compact(
        _claim_sql(
            limit=":limit",
            worker=":worker",
            lease="CAST(:lease AS interval)",
            namespace_limit="0",
            admit=False,
        )
    )
).columns(
    sa.column("restricted", sa.Boolean()),
    *executions.c,
    *(sa.column(f"{_JOB_PREFIX}{c.name}", c.type) for c in jobs.c),
)


def _literal(text: str) -> str:
    if "\x00" in text:
        raise ValueError("NUL in an SQL literal")
    return "'" + text.replace("'", "''") + "'"


def claim_batch(
    conn: Connection,
    worker: str,
    limit: int,
    lease: timedelta,
    namespace_limit: int = 0,
    *,
    admit: bool = False,
) -> tuple[list[ClaimedExecution], bool]:
    """PostgreSQL: start up to `limit` due executions in one round trip. Plain mode (`admit`
    False, no namespace limit) starts those that need no admission decision; admit mode decides
    for all. Returns the executions started, and whether candidates needing a decision were seen
    (then the next claims should admit)."""
    if admit or namespace_limit > 0:
        claim = _claim_sql(
            limit=str(int(limit)),
            worker=_literal(worker),
            lease=f"interval '{float(lease.total_seconds())} seconds'",
            namespace_limit=str(max(0, int(namespace_limit))),
            admit=True,
        )
        names, values = run_script(conn, [_ADMISSION_LOCK, claim])
        rows: list[Mapping[Any, Any]] = [_converted(dict(zip(names, row, strict=True))) for row in values]
    else:
        result = conn.execute(CLAIM_BATCH, {"limit": limit, "worker": worker, "lease": lease}).all()
        rows = [row._mapping for row in result]
    restricted = bool(rows[0]["restricted"])
    claimed = []
    for values_ in rows:
        if values_["id"] is None:  # nothing started: the verdict's row alone
            continue
        job = {c.name: values_[f"{_JOB_PREFIX}{c.name}"] for c in jobs.c}
        claimed.append(ClaimedExecution(execution_from_row(values_), job_from_record(job)))
    return claimed, restricted


def _converted(row: dict[str, Any]) -> dict[str, Any]:
    """A row read on the driver directly, as SQLAlchemy's types would have read it."""
    for name, value in row.items():
        if isinstance(value, datetime):
            row[name] = value.astimezone(UTC)
        elif isinstance(value, str) and name in _JSON_COLUMNS:
            row[name] = json.loads(value)
    return row


_JSON_COLUMNS = frozenset(
    [c.name for c in executions.c if isinstance(c.type, sa.JSON)]
    + [f"{_JOB_PREFIX}{c.name}" for c in jobs.c if isinstance(c.type, sa.JSON)]
)


# Batches of candidates a claim reads at most while serial backlogs fill them.
CANDIDATE_ROUNDS = 4


def _candidates(conn: Connection, query: sa.Select[Any], count: int) -> list[Row[Any]]:
    """Up to `count` candidates of `query` (oldest due first), where the serial executions of one
    schedule, which start one at a time, take one place: a schedule with thousands of catch-ups
    queued (misfire policy RUN_ALL) must not fill the candidates and starve the ticks of every
    other schedule. Each further batch leaves out the serial executions of the schedules seen."""
    found: list[Row[Any]] = []
    serial: set[tuple[str, str]] = set()
    for _ in range(CANDIDATE_ROUNDS):
        batch = query
        if found:
            seen = [(row.namespace, row.id) for row in found]
            batch = batch.where(sa.tuple_(executions.c.namespace, executions.c.id).not_in(seen))
        if serial:
            batch = batch.where(
                sa.or_(
                    executions.c.serial.is_(False),
                    sa.tuple_(executions.c.namespace, executions.c.schedule_id).not_in(serial),
                )
            )
        rows = conn.execute(_locked(batch.limit(count), conn, executions)).all()
        found += rows
        repeated = 0
        for row in rows:
            if row.serial and row.schedule_id:
                repeated += (row.namespace, row.schedule_id) in serial
                serial.add((row.namespace, row.schedule_id))
        if len(rows) < count or not repeated:
            break
    return sorted(found, key=lambda row: row.due_time)


def _namespaces_at(conn: Connection, limit: int) -> list[str]:
    """The namespaces with `limit` or more executions running (read from the running ones only,
    which the worker slots of all replicas bound)."""
    rows = conn.execute(
        sa.select(executions.c.namespace)
        .where(executions.c.state == RUNNING)
        .group_by(executions.c.namespace)
        .having(sa.func.count() >= limit)
    ).all()
    return [row.namespace for row in rows]


def _namespace_room(conn: Connection, namespaces: Iterable[str], limit: int) -> Counter[str]:
    """How many more executions each namespace may start under `limit`.

    PostgreSQL: each namespace's advisory lock is taken first, all of them in one order (so two
    replicas cannot deadlock), so that no other replica admits on the same count meanwhile.
    """
    ordered = sorted(set(namespaces))
    if conn.dialect.name == "postgresql":
        for namespace in ordered:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(f"namespace:{namespace}"))))
    counts = conn.execute(
        sa.select(executions.c.namespace, sa.func.count())
        .where(executions.c.namespace.in_(ordered), executions.c.state == RUNNING)
        .group_by(executions.c.namespace)
    ).all()
    room: Counter[str] = Counter({namespace: limit for namespace in ordered})
    room.subtract({namespace: int(count) for namespace, count in counts})
    return room


def _admissible(
    conn: Connection, candidates: Sequence[Row[Any]], namespace_limit: int = 0
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The candidates that may start now, and those whose job is gone.

    A serial execution starts only while nothing else of its schedule runs, a
    job with max_concurrency only below that many running, and with a
    `namespace_limit` only below that many running in its namespace. Such candidates
    take a transaction-scoped advisory lock on their namespace, schedule or job first
    (PostgreSQL), so two replicas cannot both admit one on the same stale count.
    """
    room = None
    if namespace_limit > 0:
        room = _namespace_room(conn, (r.namespace for r in candidates), namespace_limit)
    accepted: list[tuple[str, str]] = []
    orphans: list[tuple[str, str]] = []
    running_schedule: Counter[tuple[str, str]] = Counter()
    running_job: Counter[tuple[str, str]] = Counter()
    running_group: Counter[tuple[str, str]] = Counter()
    counted_schedules: set[tuple[str, str]] = set()
    counted_jobs: set[tuple[str, str]] = set()
    counted_groups: set[tuple[str, str]] = set()
    for row in candidates:
        key = (row.namespace, row.id)
        if row.job_max_concurrency is None:
            orphans.append(key)
            continue
        if room is not None and room[row.namespace] <= 0:
            continue
        schedule_key, job_key = (row.namespace, row.schedule_id), (row.namespace, row.job_id)
        if row.serial and row.schedule_id:
            if schedule_key not in counted_schedules:
                counted_schedules.add(schedule_key)
                running_schedule[schedule_key] = _running(conn, executions.c.schedule_id, schedule_key)
            if running_schedule[schedule_key] > 0:
                continue
        if row.job_max_concurrency > 0:
            if job_key not in counted_jobs:
                counted_jobs.add(job_key)
                running_job[job_key] = _running(conn, executions.c.job_id, job_key)
            if running_job[job_key] >= row.job_max_concurrency:
                continue
        group_key = (row.namespace, row.backfill_id)
        if row.group_limit > 0 and row.backfill_id:
            if group_key not in counted_groups:
                counted_groups.add(group_key)
                running_group[group_key] = _running(conn, executions.c.backfill_id, group_key)
            if running_group[group_key] >= row.group_limit:
                continue
        accepted.append(key)
        if room is not None:
            room[row.namespace] -= 1
        running_schedule[schedule_key] += 1
        running_job[job_key] += 1
        running_group[group_key] += 1
    return accepted, orphans


def _running(conn: Connection, column: sa.Column[Any], key: tuple[str, str]) -> int:
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(f"{column.name}:{key[0]}/{key[1]}")))
        )
    count = conn.execute(
        sa.select(sa.func.count())
        .select_from(executions)
        .where(executions.c.namespace == key[0], column == key[1], executions.c.state == RUNNING)
    ).scalar_one()
    return int(count)


def _held(worker: str, ids: list[str]) -> sa.Select[Any]:
    """The keys of `worker`'s RUNNING executions among `ids`, locked in primary-key order
    (PostgreSQL): every transaction that locks several executions takes them in this one order,
    so two of them never wait for each other in a cycle (a deadlock). SQLite has one writer."""
    return (
        sa.select(executions.c.namespace, executions.c.id)
        .where(executions.c.id.in_(ids), executions.c.worker == worker, executions.c.state == RUNNING)
        .order_by(executions.c.namespace, executions.c.id)
        .with_for_update(of=executions)
    )


def _key(execution: Execution) -> tuple[str, str]:
    # Ident sorts in the "C" collation: as Python sorts strings.
    return execution.namespace, execution.id


def renew(conn: Connection, worker: str, ids: list[str], lease: timedelta, now: datetime) -> LeaseRenewal:
    """Extend `worker`'s leases; which of them it should stop: cancelled, or no longer its own."""
    held = conn.execute(
        sa.update(executions)
        .where(sa.tuple_(executions.c.namespace, executions.c.id).in_(_held(worker, ids)))
        .values(lease_expires_at=now + lease)
        .returning(executions.c.id, executions.c.cancel_requested)
    ).all()
    return LeaseRenewal(
        cancelled=frozenset(row.id for row in held if row.cancel_requested),
        lost=frozenset(ids) - {row.id for row in held},
    )


def finish(
    conn: Connection,
    claimed: ClaimedExecution,
    worker: str,
    outcome: RunOutcome,
    retry: RetryPlanner,
    now: datetime,
) -> Execution | None:
    execution = claimed.execution
    cancelled = outcome.state is ExecutionState.CANCELLED
    row = conn.execute(
        sa.update(executions)
        .where(
            executions.c.namespace == execution.namespace,
            executions.c.id == execution.id,
            executions.c.worker == worker,
            executions.c.state == RUNNING,
        )
        .values(
            state=outcome.state.value,
            # A run taken ahead of its due time started when its timer fired (see `StartNow`).
            start_time=sa.func.coalesce(execution.start_time, executions.c.start_time),
            end_time=now,
            exit_code=outcome.exit_code,
            http_status=outcome.http_status,
            output=outcome.output,
            output_truncated=outcome.output_truncated,
            result=outcome.result,
            # A cancellation's reason was recorded when it was requested: keep it.
            error=sa.case(
                (sa.and_(executions.c.cancel_requested, sa.literal(cancelled)), executions.c.error),
                else_=sa.literal(outcome.error),
            ),
            lease_expires_at=None,
        )
        .returning(*LISTED_COLUMNS)
    ).one_or_none()
    if row is None:  # the lease expired and another replica took over
        return None
    emit(conn, [sql_events.execution_event(row._mapping, now)])
    ended = execution_from_row(row._mapping)
    retried = _queue_retry(conn, claimed.job, ended, outcome.state, retry, now)
    if not retried:
        _on_final(conn, claimed.job, ended, now)
        if ended.serial or claimed.job.max_concurrency or ended.group_limit:
            notify(conn, "executions")  # an execution waiting for this one's end may start now
    return ended


def finish_many(
    conn: Connection,
    items: list[tuple[ClaimedExecution, RunOutcome]],
    worker: str,
    retry: RetryPlanner,
    now: datetime,
) -> list[Execution | None]:
    """Several outcomes in one transaction: the per-transaction round trips are paid once.
    Rows are taken in primary-key order (see `_held`); results follow `items`."""
    order = sorted(range(len(items)), key=lambda i: _key(items[i][0].execution))
    ended: list[Execution | None] = [None] * len(items)
    for i in order:
        claimed, outcome = items[i]
        ended[i] = finish(conn, claimed, worker, outcome, retry, now)
    return ended


# Finishing on PostgreSQL: the outcomes of a loop turn in ONE statement, their events inserted by
# a data-modifying CTE of it, the rows locked in primary-key order (see `_held`). Built once: the
# batch travels as arrays, so the text never changes and psycopg prepares it.
_ENDED = ", ".join(f"e.{c.name}" for c in LISTED_COLUMNS)
FINISH_BATCH = sa.text(
    f"""
WITH outcome AS (
    SELECT * FROM unnest(
        CAST(:namespaces AS text[]), CAST(:ids AS text[]), CAST(:states AS text[]),
        CAST(:exit_codes AS integer[]), CAST(:http_statuses AS integer[]), CAST(:outputs AS text[]),
        CAST(:truncated AS boolean[]), CAST(:results AS text[]), CAST(:errors AS text[]),
        CAST(:event_types AS text[]), CAST(:starts AS timestamptz[])
    ) AS o(namespace, id, state, exit_code, http_status, output, output_truncated, result, error, event_type,
           start_time)
),
held AS MATERIALIZED (
    SELECT e.namespace, e.id
    FROM executions AS e JOIN outcome AS o ON e.namespace = o.namespace AND e.id = o.id
    WHERE e.worker = :worker AND e.state = '{RUNNING}'
    ORDER BY e.namespace, e.id
    FOR UPDATE OF e
),
ended AS (
    UPDATE executions AS e
    SET state = o.state, start_time = coalesce(o.start_time, e.start_time), end_time = now(),
        exit_code = o.exit_code, http_status = o.http_status,
        output = o.output, output_truncated = o.output_truncated, result = CAST(o.result AS jsonb),
        -- A cancellation's reason was recorded when it was requested: keep it.
        error = CASE WHEN e.cancel_requested AND o.state = '{ExecutionState.CANCELLED.value}'
                     THEN e.error ELSE o.error END,
        lease_expires_at = NULL
    FROM held AS h JOIN outcome AS o ON o.namespace = h.namespace AND o.id = h.id
    WHERE e.namespace = h.namespace AND e.id = h.id
    RETURNING {_ENDED}, o.event_type
),
written AS (
    INSERT INTO events (type, namespace, resource, job_id, schedule_id, actor, time, snapshot)
    SELECT event_type, namespace, 'namespaces/' || namespace || '/executions/' || id, job_id, schedule_id,
           '', end_time, jsonb_build_object('execution', to_jsonb(ended) - 'event_type')
    FROM ended
    ORDER BY namespace, id
),
-- An execution waiting for one of these to end (a serial turn, a concurrency limit) may start now.
woken AS MATERIALIZED (SELECT pg_notify('cronwire_executions', '') AS sent WHERE CAST(:wake AS boolean))
SELECT {", ".join(c.name for c in LISTED_COLUMNS)} FROM ended LEFT JOIN woken ON true
"""
).columns(*LISTED_COLUMNS)


def finishes_plainly(claimed: ClaimedExecution, outcome: RunOutcome, retry: RetryPlanner) -> bool:
    """Whether ending a run with `outcome` writes nothing but its row and its event: no retry, no
    dependent job, no callback. Those cost statements of their own, only when they happen."""
    job, execution = claimed.job, claimed.execution
    # Whether a retry follows does not depend on the time (only when it is due does).
    if retry(job, execution, outcome.state, execution.start_time or execution.create_time or _EPOCH):
        return False
    if any(_triggers(d.condition, outcome.state) for d in job.dependents):
        return False
    callback = job.callback
    return callback is None or (bool(callback.states) and outcome.state not in callback.states)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def may_unblock(claimed: ClaimedExecution, outcome: RunOutcome, retry: RetryPlanner) -> bool:
    """Whether ending a run may let a QUEUED execution start that could not before: the next
    serial turn, room under a job's or a backfill's limit, a retry or a dependent queued."""
    execution = claimed.execution
    if execution.serial or claimed.job.max_concurrency or execution.group_limit:
        return True
    return not finishes_plainly(claimed, outcome, retry)


def finish_batch(
    conn: Connection, items: Sequence[tuple[ClaimedExecution, RunOutcome]], worker: str
) -> list[Execution | None]:
    """PostgreSQL: every outcome of `items` and its event in one statement; None for a run whose
    lease `worker` no longer held. Results follow `items`. Retries, dependents and callbacks are
    `finish_rest`'s, in the same transaction."""
    outcomes = [outcome for _, outcome in items]
    rows = conn.execute(
        FINISH_BATCH,
        {
            "namespaces": [c.execution.namespace for c, _ in items],
            "ids": [c.execution.id for c, _ in items],
            "states": [o.state.value for o in outcomes],
            "exit_codes": [o.exit_code for o in outcomes],
            "http_statuses": [o.http_status for o in outcomes],
            "outputs": [o.output for o in outcomes],
            "truncated": [o.output_truncated for o in outcomes],
            "results": [None if o.result is None else json.dumps(o.result) for o in outcomes],
            "errors": [o.error for o in outcomes],
            "event_types": [STATE_EVENTS[o.state].value for o in outcomes],
            # A run taken ahead of its due time started when its timer fired (see `StartNow`).
            "starts": [c.execution.start_time for c, _ in items],
            "worker": worker,
            "wake": any(
                c.execution.serial or c.job.max_concurrency or c.execution.group_limit for c, _ in items
            ),
        },
    ).all()
    ended = {(r.namespace, r.id): execution_from_row(r._mapping) for r in rows}
    return [ended.get(_key(c.execution)) for c, _ in items]


def finish_rest(
    conn: Connection,
    items: Sequence[tuple[ClaimedExecution, RunOutcome]],
    ended: Sequence[Execution | None],
    retry: RetryPlanner,
) -> None:
    """After `finish_batch`, in its transaction: the retries, dependents and callbacks due."""
    for (claimed, outcome), execution in zip(items, ended, strict=True):
        if execution is None or execution.end_time is None or finishes_plainly(claimed, outcome, retry):
            continue
        now = execution.end_time
        if not _queue_retry(conn, claimed.job, execution, outcome.state, retry, now):
            _on_final(conn, claimed.job, execution, now)


def _queue_retry(
    conn: Connection, job: Job, ended: Execution, state: ExecutionState, retry: RetryPlanner, now: datetime
) -> bool:
    # A cancelled run is not retried, even when its attempt ended otherwise before its worker
    # heard of the cancellation.
    due = None if ended.cancel_requested else retry(job, ended, state, now)
    if due is None:
        return False
    row = new_row(
        namespace=ended.namespace,
        job_id=ended.job_id,
        schedule_id=ended.schedule_id,
        trigger=ExecutionTrigger.RETRY,
        scheduled_time=due,
        arguments=ended.arguments,
        attempt=ended.attempt + 1,
        first_attempt_id=ended.first_attempt_id or ended.id,
        parent_execution_id=ended.id,
        serial=ended.serial,
        now=now,
    )
    conn.execute(sa.insert(executions), [row])
    notify(conn, "executions")
    retrying = _execution_values(ended)
    emit(
        conn,
        [
            sql_events.execution_event(retrying, now, EventType.EXECUTION_RETRYING),
            sql_events.execution_event(row, now),
        ],
    )
    return True


def _execution_values(execution: Execution) -> dict[str, Any]:
    """An execution as the values of its row (output left out), for its event snapshot."""
    callback = execution.callback
    return {
        "namespace": execution.namespace,
        "id": execution.id,
        "job_id": execution.job_id,
        "schedule_id": execution.schedule_id,
        "state": execution.state.value,
        "trigger": execution.trigger.value,
        "scheduled_time": execution.scheduled_time,
        "due_time": execution.due_time,
        "create_time": execution.create_time,
        "start_time": execution.start_time,
        "end_time": execution.end_time,
        "attempt": execution.attempt,
        "first_attempt_id": execution.first_attempt_id,
        "parent_execution_id": execution.parent_execution_id,
        "arguments": execution.arguments,
        "exit_code": execution.exit_code,
        "http_status": execution.http_status,
        "output_truncated": execution.output_truncated,
        "result": execution.result,
        "error": execution.error,
        "skip_reason": execution.skip_reason.value if execution.skip_reason else None,
        "worker": execution.worker,
        "lease_expires_at": None,
        "cancel_requested": execution.cancel_requested,
        "serial": execution.serial,
        "backfill_id": execution.backfill_id,
        "group_limit": execution.group_limit,
        "callback_state": callback.state.value if callback else None,
        "callback_attempts": callback.attempts if callback else 0,
        "callback_http_status": callback.http_status if callback else None,
        "callback_error": callback.error if callback else "",
        "callback_last_time": callback.last_attempt_time if callback else None,
        "callback_next_time": None,
    }


def release(conn: Connection, worker: str, ids: list[str], now: datetime) -> None:
    released = conn.execute(
        sa.update(executions)
        .where(sa.tuple_(executions.c.namespace, executions.c.id).in_(_held(worker, ids)))
        # A run whose cancellation was asked for is not handed back to run again: it ends here.
        .values(
            state=sa.case((executions.c.cancel_requested, ExecutionState.CANCELLED.value), else_=QUEUED),
            end_time=sa.case((executions.c.cancel_requested, now), else_=None),
            error=sa.case((executions.c.cancel_requested, "cancelled"), else_=executions.c.error),
            start_time=sa.case((executions.c.cancel_requested, executions.c.start_time), else_=None),
            worker="",
            lease_expires_at=None,
        )
        .returning(*LISTED_COLUMNS)
    ).all()
    emit(conn, [sql_events.execution_event(r._mapping, now) for r in released])
    notify(conn, "executions")


def recover(conn: Connection, retry: RetryPlanner, limit: int, now: datetime) -> list[Execution]:
    expired = conn.execute(
        _locked(
            sa.select(executions.c.namespace, executions.c.id)
            .where(executions.c.state == RUNNING, executions.c.lease_expires_at < now)
            # Primary-key order, as every multi-row lock of executions (see `_held`).
            .order_by(executions.c.namespace, executions.c.id)
            .limit(limit),
            conn,
            executions,
        )
    ).all()
    if not expired:
        return []
    lost = conn.execute(
        sa.update(executions)
        .where(sa.tuple_(executions.c.namespace, executions.c.id).in_([tuple(r) for r in expired]))
        .values(
            state=ExecutionState.LOST.value,
            end_time=now,
            lease_expires_at=None,
            error=sa.literal("lease expired: worker ") + executions.c.worker + " stopped renewing it",
        )
        .returning(*LISTED_COLUMNS)
    ).all()
    emit(conn, [sql_events.execution_event(r._mapping, now) for r in lost])
    result = [execution_from_row(r._mapping) for r in lost]
    job_keys = {(e.namespace, e.job_id) for e in result}
    job_rows = conn.execute(sa.select(jobs).where(sa.tuple_(jobs.c.namespace, jobs.c.id).in_(job_keys))).all()
    by_key = {(r.namespace, r.id): job_from_record(r._mapping) for r in job_rows}
    for execution in result:
        job = by_key.get((execution.namespace, execution.job_id))
        if job is not None and not _queue_retry(conn, job, execution, ExecutionState.LOST, retry, now):
            _on_final(conn, job, execution, now)
    return result


# Reads and API writes


def filtered(namespace: str, where: ExecutionFilter) -> sa.Select[Any]:
    query = sa.select(*LISTED_COLUMNS).where(executions.c.namespace == namespace)
    if where.job_id:
        query = query.where(executions.c.job_id == where.job_id)
    if where.schedule_id:
        query = query.where(executions.c.schedule_id == where.schedule_id)
    if where.states:
        query = query.where(executions.c.state.in_([s.value for s in where.states]))
    if where.scheduled_after is not None:
        query = query.where(executions.c.scheduled_time >= where.scheduled_after)
    if where.scheduled_before is not None:
        query = query.where(executions.c.scheduled_time < where.scheduled_before)
    return query


def after_cursor(query: sa.Select[Any], cursor: str) -> sa.Select[Any]:
    """Newest first: rows older than the cursor `"{create_time iso}|{id}"`."""
    stamp, _, last_id = cursor.partition("|")
    created = datetime.fromisoformat(stamp)
    return query.where(
        sa.or_(
            executions.c.create_time < created,
            sa.and_(executions.c.create_time == created, executions.c.id < last_id),
        )
    )


def cursor_of(execution: Execution) -> str:
    assert execution.create_time is not None
    return f"{execution.create_time.isoformat()}|{execution.id}"


def ordered_newest_first(query: sa.Select[Any]) -> sa.Select[Any]:
    return query.order_by(executions.c.create_time.desc(), executions.c.id.desc())


def rows_to_executions(rows: Iterable[Row[Any]]) -> list[Execution]:
    return [execution_from_row(r._mapping) for r in rows]


def cancel(conn: Connection, namespace: str, execution_id: str, reason: str, now: datetime) -> str:
    """Cancel the run `execution_id` is an attempt of: its live attempt, whichever it is (QUEUED ->
    CANCELLED now; RUNNING -> cancellation requested, its worker stops it). A cancelled attempt is
    not retried, so the run ends there. The id of the attempt cancelled (`execution_id` when no
    attempt of the run is live)."""
    given = conn.execute(
        sa.select(executions.c.job_id, executions.c.first_attempt_id).where(
            executions.c.namespace == namespace, executions.c.id == execution_id
        )
    ).one_or_none()
    if given is None:
        return execution_id
    run = given.first_attempt_id or execution_id
    error = f"cancelled: {reason}" if reason else "cancelled"
    # An attempt may end (and queue the next) or be claimed between the look-up and the update:
    # look again, a few times.
    for _ in range(3):
        live: str | None = conn.execute(
            sa.select(executions.c.id)
            .where(
                executions.c.namespace == namespace,
                executions.c.job_id == given.job_id,
                executions.c.state.in_([QUEUED, RUNNING]),
                sa.or_(executions.c.id == run, executions.c.first_attempt_id == run),
            )
            .order_by(executions.c.attempt.desc())
            .limit(1)
        ).scalar_one_or_none()
        if live is None:
            return execution_id
        key = (executions.c.namespace == namespace, executions.c.id == live)
        stopped = conn.execute(
            sa.update(executions)
            .where(*key, executions.c.state == QUEUED)
            .values(state=ExecutionState.CANCELLED.value, end_time=now, error=error)
            .returning(*LISTED_COLUMNS)
        ).one_or_none()
        if stopped is not None:
            emit(conn, [sql_events.execution_event(stopped._mapping, now)])
            ended = execution_from_row(stopped._mapping)
            _on_final(conn, _job(conn, namespace, ended.job_id), ended, now)
            return live
        requested = conn.execute(
            sa.update(executions)
            .where(*key, executions.c.state == RUNNING)
            .values(cancel_requested=True, error=error)
            .returning(executions.c.id)
        ).one_or_none()
        if requested is not None:
            return live
    return execution_id


def _job(conn: Connection, namespace: str, job_id: str) -> Job | None:
    row = conn.execute(
        sa.select(jobs).where(jobs.c.namespace == namespace, jobs.c.id == job_id)
    ).one_or_none()
    return None if row is None else job_from_record(row._mapping)


# After the last attempt: job chains and completion callbacks


def _triggers(condition: DependencyCondition, state: ExecutionState) -> bool:
    if condition is DependencyCondition.ON_COMPLETION:
        return True
    succeeded = state is ExecutionState.SUCCEEDED
    return succeeded if condition is DependencyCondition.ON_SUCCESS else not succeeded


def _on_final(conn: Connection, job: Job | None, ended: Execution, now: datetime) -> None:
    """An execution ended for good (no retry follows): trigger dependents, queue the callback."""
    if job is None:
        return
    wanted = [d.job_id for d in job.dependents if _triggers(d.condition, ended.state)]
    if wanted:
        existing = conn.execute(
            sa.select(jobs.c.id).where(jobs.c.namespace == ended.namespace, jobs.c.id.in_(wanted))
        ).scalars()
        rows = [
            new_row(
                namespace=ended.namespace,
                job_id=child,
                trigger=ExecutionTrigger.DEPENDENCY,
                scheduled_time=now,
                parent_execution_id=ended.id,
                now=now,
            )
            for child in existing
        ]
        if rows:
            conn.execute(sa.insert(executions), rows)
            notify(conn, "executions")
            emit(conn, [sql_events.execution_event(r, now) for r in rows])
    callback = job.callback
    if callback is not None and (not callback.states or ended.state in callback.states):
        conn.execute(
            sa.update(executions)
            .where(executions.c.namespace == ended.namespace, executions.c.id == ended.id)
            .values(callback_state=CallbackState.PENDING.value, callback_next_time=now)
        )
        notify(conn, "callbacks")


# Completion callbacks

CALLBACK_LEASE = timedelta(seconds=60)


def claim_callbacks(conn: Connection, limit: int, now: datetime) -> list[tuple[Execution, Job]]:
    """Pending callbacks that are due, each held for CALLBACK_LEASE while it is delivered."""
    rows = conn.execute(
        _locked(
            sa.select(*LISTED_COLUMNS)
            .where(
                executions.c.callback_state == CallbackState.PENDING.value,
                executions.c.callback_next_time <= now,
            )
            .order_by(executions.c.callback_next_time)
            .limit(limit),
            conn,
            executions,
        )
    ).all()
    if not rows:
        return []
    keys = [(r.namespace, r.id) for r in rows]
    conn.execute(
        sa.update(executions)
        .where(sa.tuple_(executions.c.namespace, executions.c.id).in_(keys))
        .values(callback_next_time=now + CALLBACK_LEASE)
    )
    claimed = []
    for row in rows:
        execution = execution_from_row(row._mapping)
        job = _job(conn, execution.namespace, execution.job_id)
        if job is None or job.callback is None:
            record_callback(
                conn,
                execution.namespace,
                execution.id,
                execution.callback,
                None,
                "the job or its callback was removed",
                False,
                None,
                now,
            )
            continue
        claimed.append((execution, job))
    return claimed


def record_callback(
    conn: Connection,
    namespace: str,
    execution_id: str,
    before: CallbackDelivery | None,
    http_status: int | None,
    error: str,
    delivered: bool,
    next_time: datetime | None,
    now: datetime,
) -> None:
    """One delivery attempt's outcome; `next_time` None without delivery means: given up."""
    if delivered:
        state = CallbackState.DELIVERED
    else:
        state = CallbackState.PENDING if next_time is not None else CallbackState.FAILED
    conn.execute(
        sa.update(executions)
        .where(executions.c.namespace == namespace, executions.c.id == execution_id)
        .values(
            callback_state=state.value,
            callback_attempts=(before.attempts if before else 0) + 1,
            callback_http_status=http_status,
            callback_error=error,
            callback_last_time=now,
            callback_next_time=next_time,
        )
    )


# Live output


def append_logs(
    conn: Connection, namespace: str, execution_id: str, chunks: list[tuple[int, str]], now: datetime
) -> None:
    conn.execute(
        sa.insert(execution_logs),
        [
            {
                "namespace": namespace,
                "execution_id": execution_id,
                "offset": offset,
                "data": data,
                "time": now,
            }
            for offset, data in chunks
        ],
    )
    notify(conn, "logs")


def read_logs(
    conn: Connection, namespace: str, execution_id: str, offset: int, limit: int
) -> list[tuple[int, str, datetime]]:
    """The chunks from the one holding byte `offset` on, in order: (offset, data, time)."""
    rows = conn.execute(
        sa.select(execution_logs.c.offset, execution_logs.c.data, execution_logs.c.time)
        .where(
            execution_logs.c.namespace == namespace,
            execution_logs.c.execution_id == execution_id,
            execution_logs.c.offset >= _chunk_start(conn, namespace, execution_id, offset),
        )
        .order_by(execution_logs.c.offset)
        .limit(limit)
    ).all()
    return [(int(r.offset), str(r.data), r.time) for r in rows]


def _chunk_start(conn: Connection, namespace: str, execution_id: str, offset: int) -> int:
    """The offset of the chunk holding byte `offset` (the caller trims the part before it)."""
    found = conn.execute(
        sa.select(sa.func.max(execution_logs.c.offset)).where(
            execution_logs.c.namespace == namespace,
            execution_logs.c.execution_id == execution_id,
            execution_logs.c.offset <= offset,
        )
    ).scalar_one_or_none()
    return int(found) if found is not None else 0


# Backfill


def backfill(
    conn: Connection,
    namespace: str,
    job_id: str,
    schedule_id: str,
    arguments: JsonObject,
    ticks: list[datetime],
    serial: bool,
    group_limit: int,
    backfill_id: str,
    now: datetime,
) -> list[str]:
    rows = [
        new_row(
            namespace=namespace,
            job_id=job_id,
            schedule_id=schedule_id,
            trigger=ExecutionTrigger.BACKFILL,
            scheduled_time=tick,
            due_time=now,
            arguments=arguments,
            serial=serial,
            backfill_id=backfill_id,
            group_limit=group_limit,
            now=now,
        )
        for tick in ticks
    ]
    if rows:
        conn.execute(sa.insert(executions), rows)
        notify(conn, "executions")
        emit(conn, [sql_events.execution_event(r, now) for r in rows])
    return [r["id"] for r in rows]


def backfill_executions(conn: Connection, namespace: str, backfill_id: str) -> list[Execution]:
    rows = conn.execute(
        sa.select(*LISTED_COLUMNS)
        .where(executions.c.namespace == namespace, executions.c.backfill_id == backfill_id)
        .order_by(executions.c.scheduled_time)
    ).all()
    return rows_to_executions(rows)
