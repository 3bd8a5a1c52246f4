"""Live output of executions in SQL: chunks appended as a run writes them, read back from a
byte offset on. Its own table (`execution_logs`), apart from the execution rows.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cronwire_server.storage.sql_engine import notify
from cronwire_server.storage.tables import execution_logs


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
