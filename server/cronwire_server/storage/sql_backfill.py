"""Backfills in SQL: a schedule's past ticks queued at once as one group (serial or with a
concurrency limit of its own), and the executions of a backfill read back.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cronwire_server.core.model import Execution, ExecutionTrigger, JsonObject
from cronwire_server.storage import sql_events
from cronwire_server.storage.records import rows_to_executions
from cronwire_server.storage.sql_engine import notify
from cronwire_server.storage.sql_executions import LISTED_COLUMNS, emit, new_row
from cronwire_server.storage.tables import executions


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
