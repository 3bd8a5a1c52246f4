"""Execution rows, shared by every module that writes or reads them: the states, the columns a
listing returns, a new row's values and id, the events a transaction writes before it commits,
row locking and statement compaction; and the API's reads (filters, paging) of executions.

The dispatch, the queue, callbacks, live output and backfills (`sql_dispatch`, `sql_queue`,
`sql_callbacks`, `sql_logs`, `sql_backfill`) build on this module; it imports none of them.
Their functions take an open Connection inside a transaction and the database's "now", so the
decisions of a pass and the rows they write commit together.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cronwire_server.core.model import Execution, ExecutionState, ExecutionTrigger, JsonObject, SkipReason
from cronwire_server.storage.base import ExecutionFilter
from cronwire_server.storage.sql_engine import PENDING_EVENTS
from cronwire_server.storage.tables import executions, jobs

QUEUED, RUNNING = ExecutionState.QUEUED.value, ExecutionState.RUNNING.value
ACTIVE_STATES = (QUEUED, RUNNING)
# Columns a listing returns: everything but the (large) output.
LISTED_COLUMNS = [c for c in executions.c if c.name != "output"]

# Prefix of a job's columns read with a schedule or an execution (the dispatch's and the
# claim's joins).
JOB_PREFIX = "job__"
# Each job column and its label there.
JOB_LABELS = [(c, f"{JOB_PREFIX}{c.name}") for c in jobs.c]


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


def locked(select: sa.Select[Any], dialect: str, *tables: sa.Table) -> sa.Select[Any]:
    """`select` locking its rows of `tables` on the `dialect` named (a `Dialect.name`)."""
    # Replicas share the work: each skips rows another has locked. SQLite has one writer anyway.
    if dialect == "postgresql":
        return select.with_for_update(skip_locked=True, of=list(tables) or None)
    return select


def compact(sql: str) -> str:
    """`sql` with its runs of whitespace made one space (its literals have none): psycopg caches
    the parsing of a statement only up to 4,096 bytes, and parses a longer one at every call."""
    assert "--" not in sql, "a comment would swallow the rest of the statement"
    return " ".join(sql.split())


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


# Newest first, for `sql_paging.sized_page`.
NEWEST_FIRST = (("create_time", True), ("id", True))
