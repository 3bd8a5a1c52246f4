"""What follows an execution's last attempt, in SQL: the jobs chained after it (dependents)
queued, and its completion callback queued, claimed for delivery and its outcome recorded.

Below the queue (a finish or a cancellation ends here), above the execution rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cronwire_server.core.model import (
    CallbackDelivery,
    CallbackState,
    DependencyCondition,
    Execution,
    ExecutionState,
    ExecutionTrigger,
    Job,
)
from cronwire_server.storage import sql_events
from cronwire_server.storage.records import execution_from_row, job_from_record
from cronwire_server.storage.sql_engine import notify
from cronwire_server.storage.sql_executions import LISTED_COLUMNS, emit, locked, new_row
from cronwire_server.storage.tables import executions, jobs


def read_job(conn: Connection, namespace: str, job_id: str) -> Job | None:
    row = conn.execute(
        sa.select(jobs).where(jobs.c.namespace == namespace, jobs.c.id == job_id)
    ).one_or_none()
    return None if row is None else job_from_record(row._mapping)


def triggers(condition: DependencyCondition, state: ExecutionState) -> bool:
    if condition is DependencyCondition.ON_COMPLETION:
        return True
    succeeded = state is ExecutionState.SUCCEEDED
    return succeeded if condition is DependencyCondition.ON_SUCCESS else not succeeded


def on_final(conn: Connection, job: Job | None, ended: Execution, now: datetime) -> None:
    """An execution ended for good (no retry follows): trigger dependents, queue the callback."""
    if job is None:
        return
    wanted = [d.job_id for d in job.dependents if triggers(d.condition, ended.state)]
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
        locked(
            sa.select(*LISTED_COLUMNS)
            .where(
                executions.c.callback_state == CallbackState.PENDING.value,
                executions.c.callback_next_time <= now,
            )
            .order_by(executions.c.callback_next_time)
            .limit(limit),
            conn.dialect.name,
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
        job = read_job(conn, execution.namespace, execution.job_id)
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
