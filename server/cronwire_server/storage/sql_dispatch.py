"""The dispatcher's transaction in SQL: the due schedules read and locked, their ticks planned
by the core's `Planner` and inserted (a tick another replica recorded first left alone), runs
started at once for a pool with room, and the schedules' next fire times advanced.

A synchronous building block that `SqlStore` runs on its async driver, on an open Connection
inside a transaction with the database's "now"; the scheduling policy is the planner's, passed
in, not decided here.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.util import await_only

from cronwire_server.core.model import (
    EventType,
    ExecutionState,
    ExecutionTrigger,
    Job,
    JsonObject,
)
from cronwire_server.core.planning import PlannedRun, ScheduleActivity
from cronwire_server.executors.registry import REMOTE
from cronwire_server.storage import sql_counters, sql_events
from cronwire_server.storage.base import ClaimedExecution, DispatchResult, Planner, StartNow
from cronwire_server.storage.records import execution_from_row, job_from_record, schedule_from_record
from cronwire_server.storage.sql_driver import json_document
from cronwire_server.storage.sql_executions import (
    ACTIVE_STATES,
    JOB_LABELS,
    JOB_PREFIX,
    QUEUED,
    RUNNING,
    compact,
    emit,
    locked,
    new_row,
)
from cronwire_server.storage.tables import executions, jobs, schedules

# The longest the planning of a batch keeps the event loop before it lets others run.
PLANNING_SLICE = 0.002


class _Slices:
    """Lets the event loop run once the work since it last ran has taken `PLANNING_SLICE`: a
    dispatch's planning is the event loop's work (it runs in the store's greenlet), and what is
    due meanwhile must run on time, above all the runs taken ahead, waiting to start."""

    def __init__(self) -> None:
        self._until = time.monotonic() + PLANNING_SLICE

    def pause(self, ahead: float = 0.0) -> None:
        """Let the loop run if the slice is spent, or has less than `ahead` left (the work
        that comes next would overrun it)."""
        if time.monotonic() > self._until - ahead:
            await_only(asyncio.sleep(0))
            self._until = time.monotonic() + PLANNING_SLICE


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


def dispatch(
    conn: Connection, planner: Planner, limit: int, start: StartNow | None, now: datetime
) -> DispatchResult:
    horizon = now
    ahead = start is not None and start.ahead_count + start.quick_count > 0
    if ahead:
        assert start is not None
        horizon = now + start.ahead
    query = _due_query(conn.dialect.name, start is not None, ahead)
    params: dict[str, Any] = {"now": now, "horizon": horizon, "limit": limit}
    if start is not None:
        params["room"] = start.ahead_count + start.quick_count
    due = conn.execute(query, params).all()
    reach = horizon if horizon > now else None
    if not due:
        return DispatchResult(0, 0, 0, more=False, reach=reach)
    activity, checked = _activity(conn, [(r.namespace, r.id) for r in due])
    read_at = time.monotonic()  # when `checked` had just been read, for runs started on a timer
    rows: list[dict[str, Any]] = []
    advances: list[dict[str, Any]] = []
    cancel: list[tuple[str, str]] = []
    to_start: dict[int, Job] = {}  # id() of a row -> its job
    slotless: set[int] = set()  # id() of those that take no slot until they get one (quick jobs')
    # The jobs of the runs started, by (namespace, id): each decoded once, from its row.
    job_rows = (
        {(r.namespace, r.job_id): r._mapping for r in due if r._mapping[_JOB_READ]}
        if start is not None
        else {}
    )
    decoded: dict[tuple[str, str], Job] = {}
    room = start.count if start is not None else 0
    ahead_room = start.ahead_count if start is not None else 0
    quick_room = start.quick_count if start is not None else 0
    slices = _Slices()
    for record in due:
        slices.pause()
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
            and values[f"{JOB_PREFIX}max_concurrency"] == 0
            and values[f"{JOB_PREFIX}executor"] != REMOTE
        )
        # A quick job's ticks wait for their due time, or a free slot, without one (`StartNow`);
        # so do an untried job's taken ahead, not those due now.
        job_key = (schedule.namespace, schedule.job_id)
        quick = start is not None and (job_key in start.quick or (ahead and job_key in start.untried))
        chosen: list[dict[str, Any]] = []
        if ahead:
            # Taken ahead only when the pool starts every tick itself at its due time; anything
            # else (a skip, a serial turn, a limit to admit by) is decided when it is due. Without
            # a slot while there is room for that, else in one.
            if not startable or plan.cancel_running:
                continue
            if quick and _all_start(ticks, quick_room, horizon):
                quick_room -= len(ticks)
                slotless.update(id(row) for row in ticks)
            elif _all_start(ticks, min(room, ahead_room), horizon):
                room, ahead_room = room - len(ticks), ahead_room - len(ticks)
            else:
                continue
            chosen = ticks
        elif startable:
            for row in ticks:
                if row["state"] != QUEUED or row["serial"] or row["due_time"] > now:
                    continue
                if room > 0:
                    room -= 1
                elif quick and quick_room > 0:  # beyond the free slots: it waits for one
                    quick_room -= 1
                    slotless.add(id(row))
                else:
                    continue
                chosen.append(row)
        rows += ticks
        if chosen:
            assert start is not None
            job = decoded.get(job_key)
            if job is None:
                job_values = job_rows[job_key]
                job = job_from_record({c.name: job_values[label] for c, label in JOB_LABELS})
                decoded[job_key] = job
            for row in chosen:
                to_start[id(row)] = job
                # A tick taken ahead starts at its due time, by the pool's timer. One due now
                # starts when the activity was read, not at `now`: a run of the schedule that
                # ended after `now` but before that read must not seem to overlap this one.
                begins = max(checked, row["due_time"])
                lease = begins + start.lease
                row.update(state=RUNNING, worker=start.worker, start_time=begins, lease_expires_at=lease)
        advances.append(
            {"b_namespace": schedule.namespace, "b_id": schedule.id, "b_next": plan.next_fire_time}
        )
        if plan.cancel_running:
            cancel.append((schedule.namespace, schedule.id))
    # The ticks' statement is built in one go (about a millisecond per hundred ticks): begun late
    # in a slice, it would hold the loop for most of another.
    slices.pause(ahead=PLANNING_SLICE / 2)
    if cancel:
        # The runs the new ticks replace, asked to stop before the ticks are written: on
        # PostgreSQL that statement numbers its events, so it is the transaction's last change.
        # Locked in primary-key order like every multi-row change of executions (see `sql_queue._held`).
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
    if conn.dialect.name == "postgresql" and rows:
        # The next fire times are advanced and the claimers woken by the same statement.
        inserted = _insert_ticks(conn, rows, advances, now)
        rows = [r for r in rows if r["id"] in inserted]
    else:
        queued_events = [sql_events.execution_event(_as_queued(r), now) for r in rows if id(r) in to_start]
        inserted = _insert_ignoring_duplicate_ticks(conn, rows)
        rows = [r for r in rows if r["id"] in inserted]
        # A run started at once was queued first, as far as its events tell.
        emit(conn, [e for e in queued_events if e["resource"].rpartition("/")[2] in inserted])
        emit(conn, [sql_events.execution_event(r, now) for r in rows])
        _advance(conn, advances)
    started = [r for r in rows if id(r) in to_start]
    queued = sum(1 for r in rows if r["state"] == QUEUED)
    return DispatchResult(
        len(due),
        queued + len(started),
        len(rows) - queued - len(started),
        more=len(due) == limit,
        started=tuple(ClaimedExecution(execution_from_row(r), to_start[id(r)]) for r in started),
        slotless=frozenset(r["id"] for r in started if id(r) in slotless),
        clock=(read_at, checked),
        reach=reach,
    )


@functools.cache
def _due_query(dialect: str, fused: bool, ahead: bool) -> sa.Select[Any]:
    """The due schedules of a dispatch batch on the `dialect` named, locked, in due order: those
    due by `:now`, at most `:limit`. With `fused`, each with its job (`_with_jobs`); with `ahead`,
    also those due by `:horizon` whose runs may start without an admission decision, at most
    `:room` more. Built once for each shape: building it cost a small batch more than its plans."""
    unpaused = schedules.c.paused.is_(False)
    due_now = schedules.c.next_fire_time <= sa.bindparam("now")
    limit = sa.bindparam("limit", type_=sa.Integer())
    query = sa.select(schedules).where(unpaused).order_by(schedules.c.next_fire_time)
    if fused:
        # With each schedule, whether its runs need an admission decision (then they are queued
        # as usual); its job comes with the batch's first schedule of it (`_with_jobs`).
        query = query.add_columns(*(c.label(label) for c, label in _JOB_FLAGS)).join(
            jobs,
            sa.and_(jobs.c.namespace == schedules.c.namespace, jobs.c.id == schedules.c.job_id),
            isouter=True,
        )
    if ahead:
        # Ticks due within the pool's look-ahead are taken too (see `StartNow`), those of jobs
        # it may start without an admission decision, and no more than its room for them: each
        # schedule read costs its decoding.
        may_start = sa.and_(jobs.c.max_concurrency == 0, jobs.c.executor != REMOTE)
        # The horizon bounds every row, outside the OR: PostgreSQL reads the index up to a bound
        # only there, and read every schedule's entry when it sat inside.
        horizon = schedules.c.next_fire_time <= sa.bindparam("horizon")
        query = query.where(horizon, sa.or_(due_now, may_start)).limit(
            _due_now_and(sa.and_(unpaused, due_now), limit)
        )
    else:
        query = query.where(due_now).limit(limit)
    query = locked(query, dialect, schedules)
    return _with_jobs(query) if fused else query


# What each due schedule's row tells of its job: whether a run of it may start at once.
_JOB_FLAGS = [(c, label) for c, label in JOB_LABELS if c.name in ("max_concurrency", "executor")]
# Whether a row carries its job's columns: the batch's first schedule of the job does.
_JOB_READ = f"{JOB_PREFIX}read"


def _with_jobs(due: sa.Select[Any]) -> sa.Select[Any]:
    """The due schedules' rows with their jobs' columns, only on each job's first row: a batch
    of many schedules of one job reads and decodes the job once, not with every schedule (its
    JSON documents are most of a row's decoding). The window is outside the locking SELECT,
    where PostgreSQL allows it."""
    # Short names: the statement is near the length psycopg caches the parsing of (`compact`).
    locked_rows = due.subquery("l")
    first = sa.func.row_number().over(
        partition_by=(locked_rows.c.namespace, locked_rows.c.job_id),
        order_by=(locked_rows.c.next_fire_time, locked_rows.c.id),
    )
    rows = sa.select(locked_rows, (first == 1).label("first_of_job")).subquery("d")
    flags = {label for _, label in _JOB_FLAGS}
    return (
        sa.select(
            *(c for c in rows.c if c.name != "first_of_job"),
            jobs.c.id.is_not(None).label(_JOB_READ),
            *(c.label(label) for c, label in JOB_LABELS if label not in flags),
        )
        .join(
            jobs,
            sa.and_(jobs.c.namespace == rows.c.namespace, jobs.c.id == rows.c.job_id, rows.c.first_of_job),
            isouter=True,
        )
        .order_by(rows.c.next_fire_time)
    )


def _due_now_and(due_now: sa.ColumnElement[bool], limit: sa.BindParameter[int]) -> sa.ColumnElement[int]:
    """A LIMIT for the schedules `due_now` and `:room` more, at most `limit` in all: a pool takes
    no more ticks ahead than its room, and each schedule read costs its decoding."""
    # In due order: with a LIMIT, an estimate that many are due (a generic plan's, a third of the
    # table) still reads the index, not the whole table.
    due = sa.select(sa.literal(1)).where(due_now).order_by(schedules.c.next_fire_time).limit(limit).subquery()
    counted = sa.select(sa.func.count().label("n")).select_from(due).subquery()
    wanted = counted.c.n + sa.bindparam("room", type_=sa.Integer())
    return sa.select(sa.case((wanted < limit, wanted), else_=limit)).scalar_subquery()


def _all_start(ticks: list[dict[str, Any]], room: int, horizon: datetime) -> bool:
    """Whether a pool with `room` free slots starts every one of `ticks` itself by `horizon`."""
    return len(ticks) <= room and all(
        row["state"] == QUEUED and not row["serial"] and row["due_time"] <= horizon for row in ticks
    )


def _as_queued(row: dict[str, Any]) -> dict[str, Any]:
    """A run started by its dispatch as its QUEUED event tells it: first queued, as if claimed."""
    return {**row, "state": QUEUED, "worker": "", "start_time": None, "lease_expires_at": None}


# PostgreSQL: the ticks of a dispatch batch inserted in one statement built once (their values
# travel as one JSON document, which costs the server a fraction of what dumping an array per
# column did; the columns every tick shares are written here), a tick another replica
# recorded first left alone, and the events of those inserted written by a CTE of it: each in its
# state, and a run started at once (RUNNING) first as QUEUED, as if claimed. The same statement
# advances the batch's next fire times (the schedules are locked already, by the dispatch's
# SELECT), adds the runs to the counters (sql_counters) and, when it queued a run, wakes every
# replica's claimer at commit. A row's snapshot is built once for both of its events (OFFSET 0
# keeps that subquery whole: pulled up into its two uses, it would be built twice).
_TICK_FIELDS = {
    "namespace": "text",
    "id": "text",
    "job_id": "text",
    "schedule_id": "text",
    "state": "text",
    "scheduled_time": "timestamptz",
    "due_time": "timestamptz",
    "arguments": "jsonb",
    "error": "text",
    "skip_reason": "text",
    "serial": "boolean",
    "worker": "text",
    "start_time": "timestamptz",
    "lease_expires_at": "timestamptz",
}
_TICK_RECORD = ", ".join(f"{name} {kind}" for name, kind in _TICK_FIELDS.items())
_TICK_COLUMNS = {
    **{name: f"t.{name}" for name in _TICK_FIELDS},
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
# The snapshot columns the insert leaves at their default (given so, or not given at all).
_AT_DEFAULT = tuple(
    key
    for key in sql_events.SNAPSHOT_DEFAULTS
    if _TICK_COLUMNS.get(key, sql_events.default_literal(key)) == sql_events.default_literal(key)
)
_SNAPSHOT = sql_events.execution_snapshot_sql("i", at_default=_AT_DEFAULT)
# Its QUEUED event's: the start left out (a snapshot leaves out what is at its default).
_QUEUED_SNAPSHOT = (
    "(s.snapshot - ARRAY['worker', 'start_time', 'lease_expires_at'])"
    f" || jsonb_build_object('state', '{QUEUED}')"
)
_INSERT_TICKS = sa.text(
    compact(
        f"""
WITH tick AS MATERIALIZED (
    SELECT * FROM ROWS FROM (
        jsonb_to_recordset(CAST(:ticks AS jsonb)) AS ({_TICK_RECORD})
    ) WITH ORDINALITY AS t({", ".join(_TICK_FIELDS)}, n)
),
inserted AS (
    INSERT INTO executions ({", ".join(_TICK_COLUMNS)})
    SELECT {", ".join(_TICK_COLUMNS.values())}
    FROM tick AS t
    ORDER BY t.n
    ON CONFLICT (namespace, schedule_id, scheduled_time) WHERE trigger = '{ExecutionTrigger.SCHEDULE.value}'
    DO NOTHING
    RETURNING *
),
written AS (
    INSERT INTO events (sequence, type, namespace, resource, job_id, schedule_id, actor, time, snapshot)
    SELECT {sql_events.TAKE_SEQUENCES} + row_number() OVER (ORDER BY t.n, e.phase), e.type, i.namespace,
           'namespaces/' || i.namespace || '/executions/' || i.id, i.job_id,
           i.schedule_id, '', :now, jsonb_build_object('execution', e.snapshot)
    FROM inserted AS i
    JOIN tick AS t ON t.id = i.id
    CROSS JOIN LATERAL (SELECT {_SNAPSHOT} AS snapshot OFFSET 0) AS s
    CROSS JOIN LATERAL (
        SELECT '{EventType.EXECUTION_QUEUED.value}' AS type, {_QUEUED_SNAPSHOT} AS snapshot, 0 AS phase
        WHERE i.state = '{RUNNING}'
        UNION ALL
        SELECT {sql_events.state_event_sql("i.state")}, s.snapshot, 1
    ) AS e
    ORDER BY t.n, e.phase
    RETURNING 1
),
advanced AS (
    UPDATE schedules AS s SET next_fire_time = a.next
    FROM unnest(CAST(:advance_namespaces AS text[]), CAST(:advance_ids AS text[]),
                CAST(:advance_nexts AS timestamptz[])) AS a(namespace, id, next)
    WHERE s.namespace = a.namespace AND s.id = a.id
),
woken AS MATERIALIZED (
    SELECT pg_notify('cronwire_executions', '') WHERE EXISTS (SELECT FROM inserted WHERE state = '{QUEUED}')
),
{sql_counters.counted("inserted", after="written", inserted=True)}
SELECT id FROM inserted LEFT JOIN woken ON true LEFT JOIN counted ON true
"""
    )
)


def _insert_ticks(
    conn: Connection, rows: list[dict[str, Any]], advances: list[dict[str, Any]], now: datetime
) -> set[str]:
    """PostgreSQL: insert a dispatch's ticks with their events and advance its schedules'
    next fire times (`_INSERT_TICKS`); the ids inserted."""
    ticks = [{name: r[name] for name in _TICK_FIELDS if name in r} for r in rows]
    params: dict[str, Any] = {"ticks": json_document(ticks)}
    params["now"] = now
    params["advance_namespaces"] = [a["b_namespace"] for a in advances]
    params["advance_ids"] = [a["b_id"] for a in advances]
    params["advance_nexts"] = [a["b_next"] for a in advances]
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


# PostgreSQL: the queued and running executions of a dispatch batch's schedules, built once (the
# keys travel as arrays: an IN list of pairs would be a new statement, parsed and planned again,
# for every batch size), with the database's clock once they were read. clock_timestamp() runs
# after the statement's snapshot is taken, so it is later than the end time of every run the
# counts no longer see; the outer join gives that one row even when nothing is active.
_ACTIVITY = sa.text(
    compact(
        f"""
SELECT c.at, a.namespace, a.schedule_id, a.state, a.n
FROM (SELECT clock_timestamp() AS at) AS c
LEFT JOIN (
    SELECT e.namespace, e.schedule_id, e.state, count(*) AS n
    FROM unnest(CAST(:namespaces AS text[]), CAST(:ids AS text[])) AS k(namespace, id)
    JOIN executions AS e ON e.namespace = k.namespace AND e.schedule_id = k.id
    WHERE e.state IN ('{QUEUED}', '{RUNNING}')
    GROUP BY e.namespace, e.schedule_id, e.state
) AS a ON true
"""
    )
)


def _activity(
    conn: Connection, keys: list[tuple[str, str]]
) -> tuple[dict[tuple[str, str], ScheduleActivity], datetime]:
    """The schedules' queued and running executions, and the database's clock once they were read:
    whatever ended before that instant is no longer counted as running."""
    if conn.dialect.name == "postgresql":
        rows = conn.execute(
            _ACTIVITY, {"namespaces": [k[0] for k in keys], "ids": [k[1] for k in keys]}
        ).all()
        checked = rows[0].at
        counts = [tuple(r[1:]) for r in rows if r.namespace is not None]
    else:  # one process writes at a time: its clock is the database's
        counts = [
            tuple(r)
            for r in conn.execute(
                sa.select(
                    executions.c.namespace, executions.c.schedule_id, executions.c.state, sa.func.count()
                )
                .where(
                    sa.tuple_(executions.c.namespace, executions.c.schedule_id).in_(keys),
                    executions.c.state.in_(ACTIVE_STATES),
                )
                .group_by(executions.c.namespace, executions.c.schedule_id, executions.c.state)
            )
        ]
        checked = datetime.now(UTC)
    found: dict[tuple[str, str], Counter[str]] = {}
    for namespace, schedule_id, state, count in counts:
        found.setdefault((namespace, schedule_id), Counter())[state] = count
    activity = {key: ScheduleActivity(running=c[RUNNING], queued=c[QUEUED]) for key, c in found.items()}
    return activity, checked


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
