"""Execution retention: deleting finished executions, with their output, in small batches."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cronwire_server.model import CallbackState, RetentionPolicy
from cronwire_server.storage.sql_executions import ACTIVE_STATES
from cronwire_server.storage.tables import execution_logs, executions, request_ids

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


def _over_count(count: int, limit: int) -> sa.Select[Any]:
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
        .where(executions.c.state.not_in(ACTIVE_STATES))
        .subquery()
    )
    return (
        sa.select(finished.c.namespace, finished.c.id)
        .where(finished.c.rank > count, finished.c.deletable == 1)
        .limit(limit)
    )


def _too_old(before: datetime, limit: int) -> sa.Select[Any]:
    return (
        sa.select(executions.c.namespace, executions.c.id)
        .where(executions.c.end_time < before, *_deletable())
        .order_by(executions.c.end_time)
        .limit(limit)
    )


def prune(conn: Connection, policy: RetentionPolicy, limit: int, now: datetime) -> int:
    """Delete up to `limit` finished executions the policy no longer keeps; how many.

    Candidates are picked first, then deleted with every safety condition checked again in the
    DELETE itself, so an execution that became a retry's parent meanwhile stays.
    """
    candidates: list[tuple[str, str]] = []
    if policy.max_age is not None:
        candidates += [tuple(r) for r in conn.execute(_too_old(now - policy.max_age, limit)).all()]
    if policy.count > 0 and len(candidates) < limit:
        more = conn.execute(_over_count(policy.count, limit - len(candidates))).all()
        picked = set(candidates)
        candidates += [tuple(r) for r in more if tuple(r) not in picked]
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
