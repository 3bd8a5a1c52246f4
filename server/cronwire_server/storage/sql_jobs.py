"""Jobs in SQL: the statements that read a job (alone, or with its statistics and next run in
one statement), and what the writes of jobs and of their schedules share: a row's key with its
etag check, the event of a change, and the error when a write matched no row.

Statements are built once, at import: the hot path only binds values. `SqlStore` runs them;
`sql_schedules` builds its reads with statistics on the same counters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cronwire_server.core import errors
from cronwire_server.core.model import EventType
from cronwire_server.core.names import format_name
from cronwire_server.storage import sql_events
from cronwire_server.storage.tables import UtcDateTime, execution_counters, jobs, schedules

GET_JOB = sa.select(jobs).where(
    jobs.c.namespace == sa.bindparam("namespace"), jobs.c.id == sa.bindparam("id")
)


# Reads with statistics: the row, its counters (kept by triggers, see tables.execution_counters)
# and the next run, in one statement.
def _stats_columns(counters: sa.FromClause) -> list[sa.ColumnElement[Any]]:
    names = ("total", "succeeded", "failed", "last_run_time", "last_run_state", "durations")
    return [counters.c[name].label(f"stats_{name}") for name in names]


def counted(table: sa.Table, kind: str) -> tuple[sa.Join, list[sa.ColumnElement[Any]]]:
    counters = execution_counters.alias(f"{kind}_counters")
    joined = table.outerjoin(
        counters,
        sa.and_(
            counters.c.namespace == table.c.namespace,
            counters.c.kind == kind,
            counters.c.owner_id == table.c.id,
        ),
    )
    return joined, _stats_columns(counters)


_JOB_COUNTED, _JOB_STATS = counted(jobs, "job")


def _job_next_run(with_calendars: bool, label: str) -> sa.Label[Any]:
    """The earliest next fire time of the job's unpaused schedules that name no calendars (or,
    `with_calendars`, that do: their stored tick may be one a calendar excludes)."""
    kept = schedules.c.calendars.is_not(None) if with_calendars else schedules.c.calendars.is_(None)
    return sa.type_coerce(
        sa.select(sa.func.min(schedules.c.next_fire_time))
        .where(
            schedules.c.namespace == jobs.c.namespace,
            schedules.c.job_id == jobs.c.id,
            schedules.c.paused.is_(False),
            kept,
        )
        .scalar_subquery(),
        UtcDateTime(),
    ).label(label)


JOBS_WITH_STATS = sa.select(
    jobs,
    *_JOB_STATS,
    _job_next_run(False, "stats_next_run_time"),
    _job_next_run(True, "stats_calendar_next_run_time"),
).select_from(_JOB_COUNTED)
GET_JOB_WITH_STATS = JOBS_WITH_STATS.where(
    jobs.c.namespace == sa.bindparam("namespace"), jobs.c.id == sa.bindparam("id")
)


# ---------------------------------------------------------------------------
# Shared by jobs and schedules


@dataclass(frozen=True)
class Key:
    """One job or schedule: its kind (for errors), namespace and id."""

    kind: str
    namespace: str
    id: str

    @property
    def name(self) -> str:
        return format_name(self.kind, self.namespace, self.id)

    def match(self, table: sa.Table, expected_etag: str = "") -> list[sa.ColumnElement[bool]]:
        """The WHERE clause for this row, and its etag unless `expected_etag` is empty.

        An empty expected etag means "whatever it is now" (AIP-154: the etag is optional).
        """
        where = [table.c.namespace == self.namespace, table.c.id == self.id]
        if expected_etag:
            where.append(table.c.etag == expected_etag)
        return where


def resource_event(
    event_type: EventType, key: Key, values: Mapping[Any, Any], now: datetime, actor: str
) -> dict[str, Any]:
    """The event of a job or schedule change, with the row as its snapshot."""
    is_job = key.kind == "job"
    return sql_events.row(
        event_type,
        key.namespace,
        key.name,
        now,
        job_id=key.id if is_job else values["job_id"],
        schedule_id="" if is_job else key.id,
        snapshot=sql_events.job_row_snapshot(values) if is_job else sql_events.schedule_row_snapshot(values),
        actor=actor,
    )


def raise_missing_or_changed(conn: Connection, table: sa.Table, key: Key) -> NoReturn:
    """After a write matched no row: NotFound if the row is gone, else EtagMismatch."""
    if conn.execute(sa.select(table.c.etag).where(*key.match(table))).first() is not None:
        raise errors.EtagMismatch(key.kind, key.name)
    raise errors.NotFound(key.kind, key.name)
