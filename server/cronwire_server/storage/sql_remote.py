"""The remote queue in SQL: executions of jobs with executor `remote`, taken by remote workers.

Taking is the local claim's admission (serial turns, jobs' and backfills' concurrency limits,
`sql_executions._admissible`) over the remote executions of a worker's queues, rows locked with
SKIP LOCKED, each started under the session's lease (`storage.remote`). Renewal goes by
the lease; finishing, releasing and recovering are the local runs' own code paths
(`Store.finish_executions`, `release_executions`, `recover_expired`), which fence by `worker`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cronwire_server.executors.registry import REMOTE
from cronwire_server.storage import sql_events
from cronwire_server.storage import sql_executions as ex
from cronwire_server.storage.base import ClaimedExecution, LeaseRenewal
from cronwire_server.storage.records import execution_from_row, job_from_record
from cronwire_server.storage.remote import (
    HeldRemoteLease,
    RemoteClaim,
    RemoteTake,
    new_lease_token,
)
from cronwire_server.storage.tables import executions, jobs


def _queue_of(column: Any, key: str) -> sa.ColumnElement[str]:
    return sa.func.coalesce(column[key].as_string(), "")


def take(conn: Connection, take: RemoteTake, now: datetime) -> list[RemoteClaim]:
    """Start up to `take.limit` due remote executions for the worker, each under its own lease."""
    if take.limit <= 0 or not take.queues or (take.namespaces is not None and not take.namespaces):
        return []
    query = (
        sa.select(executions, jobs.c.max_concurrency.label("job_max_concurrency"))
        .join(jobs, sa.and_(jobs.c.namespace == executions.c.namespace, jobs.c.id == executions.c.job_id))
        .where(
            executions.c.state == ex.QUEUED,
            executions.c.due_time <= now,
            jobs.c.executor == REMOTE,
            _queue_of(jobs.c.parameters, "queue").in_(take.queues),
        )
        .order_by(executions.c.due_time)
    )
    if take.tasks:
        query = query.where(_queue_of(jobs.c.parameters, "task").in_(("", *take.tasks)))
    if take.namespaces is not None:
        query = query.where(executions.c.namespace.in_(take.namespaces))
    # A few candidates more than wanted: a serial turn or a concurrency limit may hold some back.
    candidates = ex._candidates(conn, query, take.limit + 8)
    if not candidates:
        return []
    accepted, _ = ex._admissible(conn, candidates)
    tokens = {key: new_lease_token(take.secret) for key in accepted[: take.limit]}
    if not tokens:
        return []
    rows = conn.execute(
        sa.update(executions)
        .where(
            sa.tuple_(executions.c.namespace, executions.c.id).in_(list(tokens)),
            executions.c.state == ex.QUEUED,
        )
        .values(state=ex.RUNNING, worker=take.worker, start_time=now, lease_expires_at=now + take.lease)
        .returning(*executions.c)
    ).all()
    started: list[tuple[Any, str]] = [(row._mapping, tokens[(row.namespace, row.id)]) for row in rows]
    if not started:
        return []
    ex.emit(conn, [sql_events.execution_event(values, now) for values, _ in started])
    keys = {(values["namespace"], values["job_id"]) for values, _ in started}
    rows = conn.execute(sa.select(jobs).where(sa.tuple_(jobs.c.namespace, jobs.c.id).in_(keys))).all()
    by_key = {(r.namespace, r.id): job_from_record(r._mapping) for r in rows}
    return [
        RemoteClaim(
            ClaimedExecution(execution_from_row(values), by_key[(values["namespace"], values["job_id"])]),
            token,
        )
        for values, token in started
    ]


def renew(conn: Connection, leases: list[HeldRemoteLease], lease: timedelta, now: datetime) -> LeaseRenewal:
    """Extend the leases still held (each by its own `worker`), locking the rows in primary-key
    order like every multi-row change of executions; which were cancelled, which are lost."""
    if not leases:
        return LeaseRenewal()
    keys = [(held.namespace, held.execution_id, held.worker) for held in leases]
    held_rows = (
        sa.select(executions.c.namespace, executions.c.id)
        .where(
            sa.tuple_(executions.c.namespace, executions.c.id, executions.c.worker).in_(keys),
            executions.c.state == ex.RUNNING,
        )
        .order_by(executions.c.namespace, executions.c.id)
        .with_for_update(of=executions)
    )
    renewed = conn.execute(
        sa.update(executions)
        .where(sa.tuple_(executions.c.namespace, executions.c.id).in_(held_rows))
        .values(lease_expires_at=now + lease)
        .returning(executions.c.id, executions.c.cancel_requested)
    ).all()
    return LeaseRenewal(
        cancelled=frozenset(row.id for row in renewed if row.cancel_requested),
        lost=frozenset(held.execution_id for held in leases) - {row.id for row in renewed},
    )
