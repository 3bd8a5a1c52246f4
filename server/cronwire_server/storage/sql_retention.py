"""Execution retention: deleting finished executions, with their output, in small batches."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cronwire_server.core.model import CallbackState, RetentionPolicy
from cronwire_server.storage.records import retention_from_json
from cronwire_server.storage.sql_executions import ACTIVE_STATES
from cronwire_server.storage.tables import execution_logs, executions, jobs, request_ids

RUN_JOB_METHOD = "RunJob"


def _deletable() -> list[sa.ColumnElement[bool]]:
    """Finished, its callback not waiting to be delivered, and not the parent or first attempt of an
    execution still queued or running (a retry waiting for its backoff among them)."""
    active = executions.alias("active")
    referenced = sa.exists().where(
        active.c.namespace == executions.c.namespace,
        active.c.state.in_(ACTIVE_STATES),
        sa.or_(
            active.c.parent_execution_id == executions.c.id,
            active.c.first_attempt_id == executions.c.id,
        ),
    )
    return [
        executions.c.state.not_in(ACTIVE_STATES),
        sa.or_(
            executions.c.callback_state.is_(None),
            executions.c.callback_state != CallbackState.PENDING.value,
        ),
        ~referenced,
    ]


def _over_count(count: int, limit: int, scope: list[sa.ColumnElement[bool]]) -> sa.Select[Any]:
    """Finished executions beyond the newest `count` of their job."""
    rank = (
        sa.func.row_number()
        .over(
            partition_by=(executions.c.namespace, executions.c.job_id),
            order_by=(executions.c.create_time.desc(), executions.c.id.desc()),
        )
        .label("rank")
    )
    # Protected executions count towards the newest `count`, but are never picked.
    deletable = sa.case((sa.and_(*_deletable()), 1), else_=0).label("deletable")
    finished = (
        sa.select(executions.c.namespace, executions.c.id, rank, deletable)
        .where(executions.c.state.not_in(ACTIVE_STATES), *scope)
        .subquery()
    )
    return (
        sa.select(finished.c.namespace, finished.c.id)
        .where(finished.c.rank > count, finished.c.deletable == 1)
        .limit(limit)
    )


def _too_old(before: datetime, limit: int, scope: list[sa.ColumnElement[bool]]) -> sa.Select[Any]:
    return (
        sa.select(executions.c.namespace, executions.c.id)
        .where(executions.c.end_time < before, *_deletable(), *scope)
        .order_by(executions.c.end_time)
        .limit(limit)
    )


def _pick(
    conn: Connection,
    policy: RetentionPolicy,
    scope: list[sa.ColumnElement[bool]],
    limit: int,
    now: datetime,
) -> list[tuple[str, str]]:
    """Up to `limit` executions within `scope` that `policy` no longer keeps."""
    picked: dict[tuple[str, str], None] = {}
    if policy.max_age is not None:
        for row in conn.execute(_too_old(now - policy.max_age, limit, scope)):
            picked[(row.namespace, row.id)] = None
    if policy.count > 0 and len(picked) < limit:
        for row in conn.execute(_over_count(policy.count, limit - len(picked), scope)):
            picked[(row.namespace, row.id)] = None
    return list(picked)


def _own_policies(conn: Connection) -> dict[tuple[str, str], RetentionPolicy]:
    rows = conn.execute(
        sa.select(jobs.c.namespace, jobs.c.id, jobs.c.execution_retention).where(
            jobs.c.execution_retention.is_not(None)
        )
    )
    found = {}
    for row in rows:
        policy = retention_from_json(row.execution_retention)
        if policy is not None:
            found[(row.namespace, row.id)] = policy
    return found


def prune(conn: Connection, policy: RetentionPolicy, limit: int, now: datetime) -> int:
    """Delete up to `limit` finished executions that their job's policy (or, for jobs without one,
    `policy`) no longer keeps; how many.

    Candidates are picked first, then deleted with every safety condition checked again in the
    DELETE itself, so an execution that became a retry's parent meanwhile stays.
    """
    own = _own_policies(conn)
    has_own = sa.exists().where(
        jobs.c.namespace == executions.c.namespace,
        jobs.c.id == executions.c.job_id,
        jobs.c.execution_retention.is_not(None),
    )
    candidates = _pick(conn, policy, [~has_own] if own else [], limit, now)
    for (namespace, job_id), job_policy in own.items():
        if len(candidates) >= limit:
            break
        scope = [executions.c.namespace == namespace, executions.c.job_id == job_id]
        candidates += _pick(conn, job_policy, scope, limit - len(candidates), now)
    if not candidates:
        return 0
    key = sa.tuple_(executions.c.namespace, executions.c.id)
    deleted = conn.execute(
        sa.delete(executions)
        .where(key.in_(candidates), *_deletable())
        .returning(executions.c.namespace, executions.c.id)
    ).all()
    if not deleted:
        return 0
    gone = [(r.namespace, r.id) for r in deleted]
    conn.execute(
        sa.delete(execution_logs).where(
            sa.tuple_(execution_logs.c.namespace, execution_logs.c.execution_id).in_(gone)
        )
    )
    # A RunJob retried with the request id of a pruned execution queues a new one, not NOT_FOUND.
    conn.execute(
        sa.delete(request_ids).where(
            request_ids.c.method == RUN_JOB_METHOD,
            sa.tuple_(request_ids.c.namespace, request_ids.c.resource_id).in_(gone),
        )
    )
    return len(gone)
