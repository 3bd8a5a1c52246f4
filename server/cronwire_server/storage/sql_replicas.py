"""Replica heartbeats and the cluster status view, as SQL on one connection."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cronwire_server.core.model import ClusterStatus, ExecutionTrigger, LagPercentiles, Replica
from cronwire_server.storage.records import rows_to_executions
from cronwire_server.storage.sql_engine import database_now
from cronwire_server.storage.sql_executions import (
    LISTED_COLUMNS,
    QUEUED,
    RUNNING,
)
from cronwire_server.storage.tables import FINISHED, RUNNING_ONLY, executions, replicas


def _values(replica: Replica, now: datetime) -> dict[str, Any]:
    return {
        "id": replica.id,
        "hostname": replica.hostname,
        "pid": replica.pid,
        "version": replica.version,
        "roles": ",".join(sorted(replica.roles)),
        "heartbeat_seconds": replica.heartbeat_seconds,
        "started_at": replica.started_at,
        "heartbeat_at": now,
        "loops_down": ",".join(replica.loops_down),
    }


def register(conn: Connection, replica: Replica, now: datetime) -> None:
    """Insert the replica's row, or replace it (a replica whose row was pruned while it was cut off)."""
    values = _values(replica, now)
    conn.execute(sa.delete(replicas).where(replicas.c.id == replica.id))
    conn.execute(sa.insert(replicas).values(values))


def heartbeat(conn: Connection, replica_id: str, loops_down: tuple[str, ...]) -> bool:
    """Stamp the replica's heartbeat with the database's clock, with the loops it has down; False
    if its row is gone."""
    now = database_now(conn)
    updated = conn.execute(
        sa.update(replicas)
        .where(replicas.c.id == replica_id)
        .values(heartbeat_at=now, loops_down=",".join(loops_down))
    ).rowcount
    return bool(updated)


def remove(conn: Connection, replica_id: str) -> None:
    conn.execute(sa.delete(replicas).where(replicas.c.id == replica_id))


def prune(conn: Connection, silent_for: timedelta) -> int:
    """Delete the rows of replicas not heard from for `silent_for`."""
    before = database_now(conn) - silent_for
    return max(int(conn.execute(sa.delete(replicas).where(replicas.c.heartbeat_at < before)).rowcount), 0)


def _replica_from_row(row: Any) -> Replica:
    return Replica(
        id=row.id,
        hostname=row.hostname,
        pid=row.pid,
        version=row.version,
        roles=frozenset(r for r in row.roles.split(",") if r),
        heartbeat_seconds=row.heartbeat_seconds,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        loops_down=tuple(name for name in row.loops_down.split(",") if name),
    )


def listed(conn: Connection) -> list[Replica]:
    rows = conn.execute(sa.select(replicas).order_by(replicas.c.started_at, replicas.c.id)).all()
    return [_replica_from_row(row) for row in rows]


def _lag_seconds(conn: Connection) -> sa.ColumnElement[Any]:
    start, scheduled = executions.c.start_time, executions.c.scheduled_time
    if conn.dialect.name == "postgresql":
        return sa.func.extract("epoch", start - scheduled)
    # SQLite keeps fixed-width UTC text: the difference of Julian days, in seconds.
    return (sa.func.julianday(start) - sa.func.julianday(scheduled)) * 86400.0


# Nearest-rank percentiles (percentile_disc): each is the lag of a real execution.
PERCENTILES = (0.5, 0.9, 0.99)


def lag(conn: Connection, window: timedelta, now: datetime) -> LagPercentiles:
    """Scheduling lag of the executions started in the last `window` (backfills excluded: their
    ticks are in the past on purpose).

    Those are running, or ended since the window's start: read through the partial indexes of
    running and of finished executions (no index by start time, which every insert and state
    change of an execution would write to)."""
    since = now - window
    where = [
        # The indexes' own predicates (a plan for any values still uses them).
        sa.or_(RUNNING_ONLY, sa.and_(FINISHED, executions.c.end_time >= since)),
        executions.c.start_time >= since,
        executions.c.trigger != ExecutionTrigger.BACKFILL.value,
    ]
    seconds = _lag_seconds(conn)
    if conn.dialect.name == "postgresql":
        query = sa.select(
            sa.func.count(),
            *(sa.func.percentile_disc(p).within_group(seconds) for p in PERCENTILES),
        ).where(*where)
        count, *values = conn.execute(query).one()
        if not count:
            return LagPercentiles(samples=0)
        p50, p90, p99 = (max(float(v), 0.0) for v in values)
        return LagPercentiles(samples=int(count), p50=p50, p90=p90, p99=p99)
    count = int(conn.execute(sa.select(sa.func.count()).where(*where)).scalar_one())
    if not count:
        return LagPercentiles(samples=0)
    # Nearest rank, as percentile_disc: SQLite has no percentile functions.
    ranked = sa.select(seconds.label("lag")).where(*where).order_by(seconds)
    found = []
    for p in PERCENTILES:
        rank = max(min(math.ceil(p * count - 1e-9) - 1, count - 1), 0)
        value = float(conn.execute(ranked.offset(rank).limit(1)).scalar_one())
        found.append(max(round(value, 3), 0.0))  # Julian days as doubles: good to the millisecond
    return LagPercentiles(samples=count, p50=found[0], p90=found[1], p99=found[2])


def cluster_status(conn: Connection, lag_window: timedelta) -> ClusterStatus:
    now = database_now(conn)
    counts: dict[str, int] = dict(
        conn.execute(
            sa.select(executions.c.state, sa.func.count())
            .where(executions.c.state.in_((QUEUED, RUNNING)))
            .group_by(executions.c.state)
        ).all()
    )
    oldest = conn.execute(
        sa.select(*LISTED_COLUMNS)
        .where(executions.c.state == QUEUED)
        .order_by(executions.c.due_time, executions.c.id)
        .limit(1)
    ).all()
    return ClusterStatus(
        now=now,
        replicas=listed(conn),
        queued=int(counts.get(QUEUED, 0)),
        running=int(counts.get(RUNNING, 0)),
        oldest_queued=next(iter(rows_to_executions(oldest)), None),
        lag=lag(conn, lag_window, now),
    )
