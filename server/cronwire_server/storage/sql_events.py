"""Events in SQL: written in the transaction of the change they describe, read in sequence order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from cronwire_server.core.model import (
    STATE_EVENTS,
    DeadlineKind,
    DeadlineMiss,
    Event,
    EventFilter,
    EventType,
    Execution,
    Job,
    Schedule,
)
from cronwire_server.storage.records import execution_from_row, job_from_record, schedule_from_record
from cronwire_server.storage.sql_driver import json_document
from cronwire_server.storage.tables import events

# Snapshots never carry the callback secret; a marker keeps "a secret is set" visible.
REDACTED = "<redacted>"

INSERT = sa.insert(events)  # rows as `row` makes them, one execution each


def _jsonable(values: Mapping[Any, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}


def _times(values: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    restored = dict(values)
    for key in keys:
        if isinstance(restored.get(key), str):
            restored[key] = datetime.fromisoformat(restored[key])
    return restored


JOB_TIMES = ("create_time", "update_time")
SCHEDULE_TIMES = ("start_time", "end_time", "next_fire_time", "create_time", "update_time", "resumed_at")
EXECUTION_TIMES = (
    "scheduled_time",
    "due_time",
    "create_time",
    "start_time",
    "end_time",
    "lease_expires_at",
    "callback_last_time",
    "callback_next_time",
)


def job_row_snapshot(values: Mapping[str, Any]) -> dict[str, Any]:
    snapshot = _jsonable(values)
    callback = snapshot.get("callback")
    if callback and callback.get("secret"):
        snapshot["callback"] = {**callback, "secret": REDACTED}
    return {"job": snapshot}


def schedule_row_snapshot(values: Mapping[str, Any]) -> dict[str, Any]:
    return {"schedule": _jsonable(values)}


# An execution's event snapshot leaves out what its reader puts back: the columns its event row
# holds itself (namespace, job, schedule; the id ends the resource name), the output (never in a
# snapshot), and the columns still at the value a run starts with (no error, no exit code, no
# callback...). A run's events weigh half as much on disk and in the log. Snapshots written whole
# before read the same.
SNAPSHOT_FROM_EVENT = ("namespace", "id", "job_id", "schedule_id")
SNAPSHOT_DEFAULTS: dict[str, Any] = {
    **dict.fromkeys(
        (
            "start_time",
            "end_time",
            "exit_code",
            "http_status",
            "result",
            "skip_reason",
            "lease_expires_at",
            "callback_state",
            "callback_http_status",
            "callback_last_time",
            "callback_next_time",
        )
    ),
    **dict.fromkeys(
        ("error", "worker", "first_attempt_id", "parent_execution_id", "backfill_id", "callback_error"), ""
    ),
    **dict.fromkeys(("output_truncated", "cancel_requested", "serial"), False),
    **dict.fromkeys(("group_limit", "callback_attempts"), 0),
    "attempt": 1,
    "arguments": {},
}
_LEFT_OUT = frozenset(("output", *SNAPSHOT_FROM_EVENT))


def _at_default(key: str, value: Any) -> bool:
    if key not in SNAPSHOT_DEFAULTS:
        return False
    default = SNAPSHOT_DEFAULTS[key]
    # Exact types: 0 == False and 1 == True in Python, not in the row.
    return value is None if default is None else type(value) is type(default) and value == default


def execution_row_snapshot(values: Mapping[Any, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in values.items() if k not in _LEFT_OUT and not _at_default(k, v)}
    return {"execution": _jsonable(kept)}


def default_literal(key: str) -> str:
    """SQL: the value `key` of an execution snapshot leaves out (SNAPSHOT_DEFAULTS)."""
    default = SNAPSHOT_DEFAULTS[key]
    if default is None:
        return "NULL"
    if isinstance(default, bool):
        return str(default).lower()
    return "'{}'::jsonb" if isinstance(default, dict) else repr(default)


def execution_snapshot_sql(row: str, *leave_out: str, at_default: Sequence[str] = ()) -> str:
    """SQL: the event snapshot of the execution row `row` (as `execution_row_snapshot` builds it),
    less the columns `leave_out` (a query's own). The columns `at_default` are known to hold
    their default (as a statement inserted them): left out without a test."""
    fixed = ", ".join(f"'{key}'" for key in (*sorted(_LEFT_OUT), *leave_out, *at_default))
    tested = []
    for key in SNAPSHOT_DEFAULTS:
        if key not in at_default:
            literal = default_literal(key)
            test = f"{row}.{key} IS NULL" if literal == "NULL" else f"{row}.{key} = {literal}"
            tested.append(f"CASE WHEN {test} THEN '{key}' END")
    return f"to_jsonb({row}) - ARRAY[{', '.join((fixed, *tested))}]"


def _execution_values(record: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """An execution snapshot's values with what it left out put back from its event `record`."""
    return {
        **SNAPSHOT_DEFAULTS,
        "namespace": record["namespace"],
        "id": record["resource"].rsplit("/", 1)[-1],
        "job_id": record["job_id"],
        "schedule_id": record["schedule_id"],
        "output": "",
        "arguments": {},  # each execution its own: not the one default object, shared
        **_times(values, EXECUTION_TIMES),
    }


def deadline_miss_snapshot(miss: DeadlineMiss) -> dict[str, Any]:
    return {
        "deadline_miss": {
            "kind": miss.kind.value,
            "scheduled_time": miss.scheduled_time.isoformat(),
            "deadline": miss.deadline.isoformat(),
            "execution_id": miss.execution_id,
        }
    }


def row(
    event_type: EventType,
    namespace: str,
    resource: str,
    now: datetime,
    *,
    job_id: str = "",
    schedule_id: str = "",
    snapshot: dict[str, Any] | None = None,
    actor: str = "",
) -> dict[str, Any]:
    return {
        "type": event_type.value,
        "namespace": namespace,
        "resource": resource,
        "job_id": job_id,
        "schedule_id": schedule_id,
        "actor": actor,
        "time": now,
        "snapshot": snapshot,
    }


def execution_event(
    values: Mapping[Any, Any], now: datetime, event_type: EventType | None = None
) -> dict[str, Any]:
    """The event of an execution row arriving in its state (or `event_type`)."""
    from cronwire_server.core.model import ExecutionState
    from cronwire_server.core.names import execution_name

    kind = event_type or STATE_EVENTS[ExecutionState(values["state"])]
    return row(
        kind,
        values["namespace"],
        execution_name(values["namespace"], values["id"]),
        now,
        job_id=values["job_id"],
        schedule_id=values["schedule_id"],
        snapshot=execution_row_snapshot(values),
    )


# PostgreSQL: a batch of events in one statement whatever its size (an executemany is one
# statement per row), built once: the rows travel as one JSON document, in order.
_INSERT_MANY = sa.text(
    """
INSERT INTO events (type, namespace, resource, job_id, schedule_id, actor, time, snapshot)
SELECT type, namespace, resource, job_id, schedule_id, actor, time, NULLIF(snapshot, 'null')
FROM ROWS FROM (
    jsonb_to_recordset(CAST(:rows AS jsonb)) AS (
        type text, namespace text, resource text, job_id text, schedule_id text, actor text,
        time timestamptz, snapshot jsonb)
) WITH ORDINALITY AS r(type, namespace, resource, job_id, schedule_id, actor, time, snapshot, n)
ORDER BY n
"""
)
_COLUMNS = ("type", "namespace", "resource", "job_id", "schedule_id", "actor", "time", "snapshot")


def insert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Write events, not yet numbered; the sequencer numbers them once committed.

    On PostgreSQL a trigger wakes the sequencers of every replica (migrations 0004 and 0028).
    """
    if len(rows) > 1 and conn.dialect.name == "postgresql":
        document = json_document([{c: r[c] for c in _COLUMNS} for r in rows])
        conn.execute(_INSERT_MANY, {"rows": document})
    elif rows:
        conn.execute(INSERT, rows)


def state_event_sql(state: str) -> str:
    """SQL: the event type an execution whose state is the SQL expression `state` is reported
    as (`STATE_EVENTS`), for statements that write a run's events themselves."""
    cases = " ".join(f"WHEN '{s.value}' THEN '{event.value}'" for s, event in STATE_EVENTS.items())
    return f"CASE {state} {cases} END"


# PostgreSQL: the statements of every run number their events as they write them, each event's
# sequence this plus its place in the statement's order (migration 0028: the sequencer's lock,
# held until the statement's transaction commits, so it must be that transaction's last change).
# NULL while another numbering holds the lock: the events are then written unnumbered, for the
# sequencer, rather than every run's statements taking turns.
TAKE_SEQUENCES = "(SELECT cronwire_take_sequences())"


# PostgreSQL's numbering (`sequence_pending` is SQLite's): the sequencer's lock, the numbering and
# the NOTIFY of the replicas, in one call of the function migration 0017 made (one statement, one
# round trip, prepared; the store sends it on a connection of its own, `sql_wire.WireConnection`).
NUMBER_PENDING = sa.text("SELECT cronwire_number_events(:limit) AS numbered").columns(
    sa.column("numbered", sa.Integer())
)


def sequence_pending(conn: Connection, limit: int) -> int:
    """SQLite: number the committed events that have no sequence yet, in insertion order, in
    `conn`'s open transaction; returns how many were numbered.

    One sequencer at a time (SQLite has a single writer; PostgreSQL's `NUMBER_PENDING` takes a
    transaction-scoped advisory lock, waited for: a numbering is short): each numbering commits
    before the next starts, so sequences become visible in order, and a reader that has seen
    sequence N will never see a smaller one.
    """
    base = conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.sequence), 0))).scalar_one()
    pending = (
        sa.select(events.c.id, sa.func.row_number().over(order_by=events.c.id).label("n"))
        .where(events.c.sequence.is_(None))
        .order_by(events.c.id)
        .limit(limit)
        .subquery()
    )
    numbered = conn.execute(
        sa.update(events).where(events.c.id == pending.c.id).values(sequence=int(base) + pending.c.n)
    ).rowcount
    return max(int(numbered), 0)


def latest(conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.sequence), 0))).scalar_one())


def prune(conn: Connection, before: datetime, limit: int) -> int:
    """Delete those of the `limit` oldest numbered events that are older than `before`.

    The oldest are read in sequence order, so a pass reads at most `limit` events however many
    are kept (there is no index by time). Sequence order is commit order, about but not exactly
    time order: an old event numbered after `limit` newer ones waits until they are old too. A
    pass that finds none to delete among the oldest ends the pruning.

    The newest event always stays: numbering continues from it, so a sequence is never reused.
    """
    newest = sa.select(sa.func.max(events.c.sequence)).scalar_subquery()
    oldest = (
        sa.select(events.c.id, events.c.time, events.c.sequence)
        .where(events.c.sequence.is_not(None))
        .order_by(events.c.sequence)
        .limit(limit)
        .subquery()
    )
    doomed = sa.select(oldest.c.id).where(oldest.c.time < before, oldest.c.sequence < newest)
    return max(int(conn.execute(sa.delete(events).where(events.c.id.in_(doomed))).rowcount), 0)


# For single-statement writes (PostgreSQL): the event goes in a data-modifying CTE of the main
# statement. `id` is spelled DEFAULT: the statement's parameters carry the resource's own `id`.
INSERT_ONE = sa.insert(events).values(
    id=sa.literal_column("DEFAULT"),
    type=sa.bindparam("ev_type"),
    namespace=sa.bindparam("ev_namespace"),
    resource=sa.bindparam("ev_resource"),
    job_id=sa.bindparam("ev_job_id"),
    schedule_id=sa.bindparam("ev_schedule_id"),
    actor=sa.bindparam("ev_actor"),
    time=sa.bindparam("ev_time"),
    snapshot=sa.bindparam("ev_snapshot", type_=events.c.snapshot.type),
)


def params(event: dict[str, Any]) -> dict[str, Any]:
    """`event` (from `row`) as the bind parameters of INSERT_ONE."""
    return {f"ev_{key}": value for key, value in event.items()}


def event_from_row(record: Mapping[Any, Any]) -> Event:

    snapshot: Job | Schedule | Execution | None = None
    miss: DeadlineMiss | None = None
    data = record["snapshot"]
    if data:
        ((kind, values),) = data.items()
        if kind == "deadline_miss":
            miss = DeadlineMiss(
                DeadlineKind(values["kind"]),
                datetime.fromisoformat(values["scheduled_time"]),
                datetime.fromisoformat(values["deadline"]),
                values["execution_id"],
            )
        elif kind == "job":
            snapshot = job_from_record(_times(values, JOB_TIMES))
        elif kind == "schedule":
            snapshot = schedule_from_record(_times(values, SCHEDULE_TIMES))
        else:
            snapshot = execution_from_row(_execution_values(record, values))
    return Event(
        sequence=int(record["sequence"]),
        type=EventType(record["type"]),
        namespace=record["namespace"],
        resource=record["resource"],
        time=record["time"],
        job_id=record["job_id"],
        schedule_id=record["schedule_id"],
        actor=record["actor"],
        snapshot=snapshot,
        deadline_miss=miss,
    )


def select(where: EventFilter, after: int, limit: int, up_to: int | None = None) -> sa.Select[Any]:
    query = sa.select(events).where(events.c.sequence > after, events.c.sequence.is_not(None))
    if up_to is not None:
        query = query.where(events.c.sequence <= up_to)
    if where.namespace:
        query = query.where(events.c.namespace == where.namespace)
    if where.namespaces is not None:
        query = query.where(events.c.namespace.in_(sorted(where.namespaces)))
    if where.job_id:
        query = query.where(events.c.job_id == where.job_id)
    if where.schedule_id:
        query = query.where(events.c.schedule_id == where.schedule_id)
    if where.types:
        query = query.where(events.c.type.in_(sorted(t.value for t in where.types)))
    return query.order_by(events.c.sequence).limit(limit)


def select_page(
    where: EventFilter,
    after: int,
    limit: int,
    max_bytes: int,
    up_to: int | None = None,
    *,
    postgres: bool,
) -> sa.Select[Any]:
    """Like `select`, cut further to the longest prefix whose snapshots fit in `max_bytes`, and
    at least one event: a reader holds a bounded page however large each snapshot is. Each row
    also carries `page_bytes` (its snapshot's size) and `page_rows` (how many rows the count
    alone allowed), so a caller tells a cut page from the end.

    The size is the stored one, known without reading the value: on PostgreSQL the (possibly
    compressed) datum size, on SQLite the JSON text's length. Sizing by the decoded text would
    make the database serialize every snapshot of the count-limited page for each page read.
    """
    counted = select(where, after, limit, up_to).subquery()
    stored = sa.func.pg_column_size(counted.c.snapshot) if postgres else sa.func.length(counted.c.snapshot)
    size = sa.func.coalesce(stored, 0)
    sized = sa.select(
        counted,
        size.label("page_bytes"),
        (sa.func.sum(size).over(order_by=counted.c.sequence) - size).label("bytes_before"),
        sa.func.count().over().label("page_rows"),
    ).subquery()
    return (
        sa.select(*(sized.c[c.name] for c in events.c), sized.c.page_bytes, sized.c.page_rows)
        .where(sized.c.bytes_before < max_bytes)
        .order_by(sized.c.sequence)
    )


def to_events(rows: Sequence[Row[Any]]) -> list[Event]:
    return [event_from_row(r._mapping) for r in rows]
