"""The queue of executions in SQL, as the workers see it: claiming due executions (admission by
serial turn, job, backfill group and namespace limits), renewing leases, finishing runs (with
the retry the core's `RetryPlanner` decides), handing runs back, recovering expired leases, and
cancelling a run.

Synchronous building blocks that `SqlStore` runs on its async driver, each on an open
Connection inside a transaction with the database's "now". Remote takes (`sql_remote`) reuse
the claim's candidates and admission.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from cronwire_server.core.model import (
    EventType,
    Execution,
    ExecutionState,
    ExecutionTrigger,
    Job,
)
from cronwire_server.executors.registry import REMOTE
from cronwire_server.executors.runtime import RunOutcome
from cronwire_server.storage import sql_counters, sql_events
from cronwire_server.storage.base import ClaimedExecution, LeaseRenewal, RetryPlanner
from cronwire_server.storage.records import execution_from_row, execution_values, job_from_record
from cronwire_server.storage.sql_callbacks import on_final, read_job, triggers
from cronwire_server.storage.sql_driver import json_document, run_script
from cronwire_server.storage.sql_engine import json_loads, notify
from cronwire_server.storage.sql_executions import (
    JOB_LABELS,
    JOB_PREFIX,
    LISTED_COLUMNS,
    QUEUED,
    RUNNING,
    compact,
    emit,
    locked,
    new_row,
)
from cronwire_server.storage.tables import executions, jobs


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
_CANDIDATE = (
    "namespace, id, job_id, schedule_id, serial, backfill_id, group_limit, due_time, scheduled_time, "
    "max_concurrency, row_id"
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


# What a local claim admits from: its candidates whose job still exists.
_CLAIM_CANDIDATES = "candidate AS c\n    WHERE NOT c.orphan"


def admission_steps(columns: str, candidates: str) -> str:
    """The admission a local claim and a remote take share, as CTEs over `candidates` (a FROM item
    aliased `c`), each keeping `columns` and `ok`: `serial_turn` (the earliest of a serial schedule,
    and none of it running), then `group_room` (a backfill's group limit), then `job_room` (the
    job's max_concurrency), counting the RUNNING executions of each key; ends with a comma."""
    return f"""
serial_turn AS (
    SELECT {columns},
           CASE WHEN c.serial AND c.schedule_id <> ''
                THEN {_rank("c.namespace, c.schedule_id", "c")} = 1
                     AND {_running_count("schedule_id", "c")} = 0
                ELSE true END AS ok
    FROM {candidates}
),
group_room AS (
    SELECT {columns},
           CASE WHEN s.group_limit > 0 AND s.backfill_id <> ''
                THEN {_rank("s.namespace, s.backfill_id", "s")} + {_running_count("backfill_id", "s")}
                     <= s.group_limit
                ELSE true END AS ok
    FROM serial_turn AS s WHERE s.ok
),
job_room AS (
    SELECT {columns},
           CASE WHEN s.max_concurrency > 0
                THEN {_rank("s.namespace, s.job_id", "s")} + {_running_count("job_id", "s")}
                     <= s.max_concurrency
                ELSE true END AS ok
    FROM group_room AS s WHERE s.ok
),"""


# Built once: an admitting claim's statement is built at every call.
_STARTED_SNAPSHOT = sql_events.execution_snapshot_sql("started")


def _claim_sql(*, limit: str, worker: str, lease: str, namespace_limit: str, admit: bool) -> str:
    """The claim statement; each argument but `admit` is an SQL expression (a bind parameter or a
    literal)."""
    if admit:
        decided = (
            admission_steps(_CANDIDATE, _CLAIM_CANDIDATES)
            + f"""
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
    SELECT namespace, id, row_id FROM namespace_room WHERE ok
    ORDER BY due_time, scheduled_time, id LIMIT {limit}
),
orphaned AS (
    UPDATE executions AS e
    SET state = '{ExecutionState.FAILED.value}', end_time = now(), error = '{_ORPHANED}'
    FROM candidate AS c
    WHERE c.orphan AND e.ctid = c.row_id AND e.namespace = c.namespace AND e.id = c.id
),
"""
        )
    else:  # only candidates that need no decision
        decided = f"""
admitted AS MATERIALIZED (
    SELECT namespace, id, row_id FROM candidate WHERE NOT restricted
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
    # A plain claim adds its runs to the counters itself (sql_counters); an admitting one may also
    # fail orphans, which its trigger records with the runs it starts.
    counting, read_counted = "", ""
    if not admit:
        counting = ",\n" + sql_counters.counted(
            "started", after="written", inserted=False, old_state=ExecutionState.QUEUED
        )
        read_counted = " CROSS JOIN counted"
    # The rows picked are found again by their ctid (a TID scan), not by a join on (namespace, id):
    # without statistics the planner priced every index alike for that join and once took one by
    # namespace alone, reading the namespace's executions for each row.
    # A remote job's runs are left out by a lookup of the job's executor, not NOT EXISTS: as an
    # anti-join PostgreSQL estimated that few candidates survive it, and read and sorted every
    # queued execution to pick the batch; this way it reads them in due order and stops at the limit.
    return f"""
WITH picked AS MATERIALIZED (
    SELECT e.namespace, e.id, e.job_id, e.schedule_id, e.serial, e.backfill_id, e.group_limit, e.due_time,
           e.scheduled_time, e.ctid AS row_id
    FROM executions AS e
    WHERE e.state = '{QUEUED}' AND e.due_time <= now()
      AND coalesce((SELECT x.executor FROM jobs AS x WHERE x.namespace = e.namespace AND x.id = e.job_id),
                   '') <> '{REMOTE}'
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
    WHERE e.ctid = a.row_id AND e.namespace = a.namespace AND e.id = a.id
    RETURNING e.*
),
written AS (
    INSERT INTO events (sequence, type, namespace, resource, job_id, schedule_id, actor, time, snapshot)
    SELECT {sql_events.TAKE_SEQUENCES} + row_number() OVER (ORDER BY due_time, namespace, id),
           '{EventType.EXECUTION_STARTED.value}', namespace,
           'namespaces/' || namespace || '/executions/' || id, job_id, schedule_id, '', start_time,
           jsonb_build_object('execution', {_STARTED_SNAPSHOT})
    FROM started
    ORDER BY due_time, namespace, id
    RETURNING 1
){counting}
SELECT v.restricted, {_STARTED}, {", ".join(f"j.{c.name} AS {JOB_PREFIX}{c.name}" for c in jobs.c)}
FROM verdict AS v{read_counted}
LEFT JOIN (started AS s JOIN jobs AS j ON j.namespace = s.namespace AND j.id = s.job_id) ON true
ORDER BY s.due_time
"""


# Plain mode, built once (psycopg prepares it): starts only candidates that need no decision.
CLAIM_BATCH = sa.text(
    compact(
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
    *(sa.column(f"{JOB_PREFIX}{c.name}", c.type) for c in jobs.c),
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
        result = conn.execute(CLAIM_BATCH, claim_params(worker, limit, lease)).all()
        rows = [row._mapping for row in result]
    return claimed_from(rows)


def claim_params(worker: str, limit: int, lease: timedelta) -> dict[str, Any]:
    """CLAIM_BATCH's parameters."""
    return {"limit": limit, "worker": worker, "lease": lease}


def claimed_from(rows: Sequence[Mapping[Any, Any]]) -> tuple[list[ClaimedExecution], bool]:
    """A claim's rows (CLAIM_BATCH's columns) as the executions it started, and whether it saw
    candidates needing an admission decision."""
    restricted = bool(rows[0]["restricted"])
    claimed = []
    for values_ in rows:
        if values_["id"] is None:  # nothing started: the verdict's row alone
            continue
        job = {c.name: values_[label] for c, label in JOB_LABELS}
        claimed.append(ClaimedExecution(execution_from_row(values_), job_from_record(job)))
    return claimed, restricted


def _converted(row: dict[str, Any]) -> dict[str, Any]:
    """A row read on the driver directly, as SQLAlchemy's types would have read it."""
    for name, value in row.items():
        if isinstance(value, datetime):
            row[name] = value.astimezone(UTC)
        elif isinstance(value, str) and name in _JSON_COLUMNS:
            row[name] = json_loads(value)
    return row


_JSON_COLUMNS = frozenset(
    [c.name for c in executions.c if isinstance(c.type, sa.JSON)]
    + [f"{JOB_PREFIX}{c.name}" for c in jobs.c if isinstance(c.type, sa.JSON)]
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
        rows = conn.execute(locked(batch.limit(count), conn.dialect.name, executions)).all()
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
    # What this records is dated when the run ended (its outcome may have waited to be written).
    now = ended_at(outcome, now, execution.start_time)
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
        on_final(conn, claimed.job, ended, now)
        if ended.serial or claimed.job.max_concurrency or ended.group_limit:
            notify(conn, "executions")  # an execution waiting for this one's end may start now
    return ended


def waited(outcome: RunOutcome) -> float:
    """Seconds since the run of `outcome` ended (`RunOutcome.ended`): how long its outcome waited
    to be written; 0 when that is not known."""
    return 0.0 if outcome.ended is None else max(0.0, time.monotonic() - outcome.ended)


def ended_at(outcome: RunOutcome, now: datetime, start: datetime | None) -> datetime:
    """When the run of `outcome` ended, on the database's clock that reads `now`; never before
    its start."""
    end = now - timedelta(seconds=waited(outcome))
    return end if start is None or end >= start else start


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
# a data-modifying CTE of it. `cronwire_end_executions` (migration 0031) locks the rows in
# primary-key order (as `_held` explains) and by primary key alone, then ends them by the address
# the lock returned: the statement reads no table itself, so one plan fits every call. Built once:
# the batch travels as one JSON document, so the text never changes and psycopg prepares it (and
# one json.dumps costs the server a tenth of what dumping eleven arrays, element by element, did).
_ENDED = ", ".join(f"e.{c.name}" for c in LISTED_COLUMNS)


def _finish_sql(last_change: bool) -> str:
    """The finish's statement. Where it is its transaction's last change, it numbers its events as
    it writes them (sql_events.TAKE_SEQUENCES) and adds its runs to the counters (sql_counters)."""
    sequence = f"{sql_events.TAKE_SEQUENCES} + row_number() OVER (ORDER BY namespace, id)"
    counting, read_counted = "", ""
    if last_change:
        counting = ", " + sql_counters.counted(
            "ended", after="written", inserted=False, old_state=ExecutionState.RUNNING, own_trigger=False
        )
        read_counted = " LEFT JOIN counted ON true"
    return f"""
WITH ended AS MATERIALIZED (
    SELECT {_ENDED}, {sql_events.state_event_sql("e.state")} AS event_type
    FROM cronwire_end_executions(CAST(:outcomes AS jsonb), :worker, {str(last_change).lower()}) AS e
),
written AS (
    INSERT INTO events (sequence, type, namespace, resource, job_id, schedule_id, actor, time, snapshot)
    SELECT {sequence if last_change else "NULL::bigint"}, event_type, namespace,
           'namespaces/' || namespace || '/executions/' || id, job_id, schedule_id, '', end_time,
           jsonb_build_object('execution', {sql_events.execution_snapshot_sql("ended", "event_type")})
    FROM ended
    ORDER BY namespace, id
    RETURNING 1
),
-- An execution waiting for one of these to end (a serial turn, a concurrency limit) may start now.
woken AS MATERIALIZED (SELECT pg_notify('cronwire_executions', '') AS sent WHERE CAST(:wake AS boolean))
{counting}
SELECT {", ".join(c.name for c in LISTED_COLUMNS)} FROM ended LEFT JOIN woken ON true{read_counted}
"""


# The plain finishes' (one autocommitted statement each), and the others' (retries, dependents
# and callbacks follow it in its transaction: their events are the sequencer's to number, their
# runs the counters' triggers' to record).
FINISH_BATCH = sa.text(_finish_sql(last_change=True)).columns(*LISTED_COLUMNS)
_FINISH_IN_TRANSACTION = sa.text(_finish_sql(last_change=False)).columns(*LISTED_COLUMNS)


def finishes_plainly(claimed: ClaimedExecution, outcome: RunOutcome, retry: RetryPlanner) -> bool:
    """Whether ending a run with `outcome` writes nothing but its row and its event: no retry, no
    dependent job, no callback. Those cost statements of their own, only when they happen."""
    job, execution = claimed.job, claimed.execution
    # Whether a retry follows does not depend on the time (only when it is due does).
    if retry(job, execution, outcome.state, execution.start_time or execution.create_time or _EPOCH):
        return False
    if any(triggers(d.condition, outcome.state) for d in job.dependents):
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
    rows = conn.execute(_FINISH_IN_TRANSACTION, finish_params(items, worker)).all()
    return finished(items, [row._mapping for row in rows])


def finish_params(items: Sequence[tuple[ClaimedExecution, RunOutcome]], worker: str) -> dict[str, Any]:
    """FINISH_BATCH's parameters."""
    outcomes = [_outcome_document(claimed, outcome) for claimed, outcome in items]
    return {
        "outcomes": json_document(outcomes),
        "worker": worker,
        "wake": any(c.execution.serial or c.job.max_concurrency or c.execution.group_limit for c, _ in items),
    }


def finished(
    items: Sequence[tuple[ClaimedExecution, RunOutcome]], rows: Sequence[Mapping[Any, Any]]
) -> list[Execution | None]:
    """FINISH_BATCH's rows as the executions ended, following `items` (None where the lease was
    no longer held)."""
    ended = {(r["namespace"], r["id"]): execution_from_row(r) for r in rows}
    return [ended.get(_key(c.execution)) for c, _ in items]


def _outcome_document(claimed: ClaimedExecution, outcome: RunOutcome) -> dict[str, Any]:
    """One outcome of FINISH_BATCH's document."""
    execution = claimed.execution
    return {
        "namespace": execution.namespace,
        "id": execution.id,
        "state": outcome.state.value,
        "exit_code": outcome.exit_code,
        "http_status": outcome.http_status,
        "output": outcome.output,
        "output_truncated": outcome.output_truncated,
        "result": outcome.result,
        "error": outcome.error,
        # A run taken ahead of its due time started when its timer fired (see `StartNow`).
        "start_time": execution.start_time,
        # It ended that long before the statement's now(), maybe in a batch or while the
        # database was away: its end time is when it ended.
        "waited": waited(outcome),
    }


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
            on_final(conn, claimed.job, execution, now)


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
    retrying = execution_values(ended)
    emit(
        conn,
        [
            sql_events.execution_event(retrying, now, EventType.EXECUTION_RETRYING),
            sql_events.execution_event(row, now),
        ],
    )
    return True


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
        locked(
            sa.select(executions.c.namespace, executions.c.id)
            .where(executions.c.state == RUNNING, executions.c.lease_expires_at < now)
            # Primary-key order, as every multi-row lock of executions (see `_held`).
            .order_by(executions.c.namespace, executions.c.id)
            .limit(limit),
            conn.dialect.name,
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
            on_final(conn, job, execution, now)
    return result


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
            on_final(conn, read_job(conn, namespace, ended.job_id), ended, now)
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
