"""The relational schema, as SQLAlchemy Core tables.

The Alembic migrations are the source of truth for the database; these tables
must describe the same thing so the store's statements compile against them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, DOUBLE_PRECISION, JSONB
from sqlalchemy.engine import Dialect

# Stable constraint names, so later migrations can drop or alter them by name.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# JSONB on PostgreSQL: binary, indexable; plain JSON text elsewhere.
Json = sa.JSON().with_variant(JSONB(), "postgresql")
# For optional documents: Python None is SQL NULL, not the JSON value null.
OptionalJson = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

# Identifiers compare byte-wise on PostgreSQL ("C" collation) as they do on SQLite,
# so id order (the list order and the paging cursor) is the same on both backends.
Ident = sa.String().with_variant(sa.String(collation="C"), "postgresql")


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes in and out, on every backend.

    PostgreSQL stores TIMESTAMP WITH TIME ZONE; SQLite stores naive UTC text
    (fixed-width, so it sorts chronologically), made aware again on read.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store takes timezone-aware datetimes only")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _audit_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("create_time", UtcDateTime(), nullable=False),
        sa.Column("update_time", UtcDateTime(), nullable=False),
        sa.Column("etag", sa.String(), nullable=False),
    ]


jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("namespace", Ident, primary_key=True),
    sa.Column("id", Ident, primary_key=True),
    sa.Column("executor", sa.String(), nullable=False),
    sa.Column("description", sa.Text(), nullable=False),
    sa.Column("parameters", Json, nullable=False),
    sa.Column("timeout_seconds", sa.Float(), nullable=True),
    sa.Column("retry_policy", OptionalJson, nullable=True),
    sa.Column("max_concurrency", sa.Integer(), nullable=False),
    sa.Column("dependents", Json, nullable=False),
    sa.Column("callback", OptionalJson, nullable=True),
    sa.Column("labels", Json, nullable=False),
    *_audit_columns(),
    # {"count": N, "max_age_seconds": S | null}; NULL: the server's retention policy.
    sa.Column("execution_retention", OptionalJson, nullable=True),
    # The JSON Schema of its runs' arguments; NULL: any arguments.
    sa.Column("arguments_schema", OptionalJson, nullable=True),
    # Serves ListJobs filtered by executor, already in cursor (id) order.
    sa.Index(None, "namespace", "executor", "id"),
)

schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("namespace", Ident, primary_key=True),
    sa.Column("id", Ident, primary_key=True),
    sa.Column("job_id", Ident, nullable=False),
    sa.Column("trigger", Json, nullable=False),
    sa.Column("time_zone", sa.String(), nullable=False),
    sa.Column("description", sa.Text(), nullable=False),
    sa.Column("start_time", UtcDateTime(), nullable=True),
    sa.Column("end_time", UtcDateTime(), nullable=True),
    sa.Column("jitter_seconds", sa.Float(), nullable=True),
    sa.Column("misfire_policy", sa.String(), nullable=False),
    sa.Column("catchup_window_seconds", sa.Float(), nullable=False),
    sa.Column("overlap_policy", sa.String(), nullable=False),
    sa.Column("paused", sa.Boolean(), nullable=False),
    sa.Column("pause_reason", sa.Text(), nullable=False),
    sa.Column("arguments", Json, nullable=False),
    sa.Column("next_fire_time", UtcDateTime(), nullable=True),
    *_audit_columns(),
    sa.Column("resumed_at", UtcDateTime(), nullable=True),
    # Calendar ids (JSON lists) and the calendars they reach, as they were at the last change of
    # the schedule or of one of them (records.calendars_to_json); NULL when it names none.
    sa.Column("exclude_calendars", Json, nullable=False, server_default="[]"),
    sa.Column("only_on_calendars", Json, nullable=False, server_default="[]"),
    sa.Column("calendars", OptionalJson, nullable=True),
    # Its deadlines (records.deadlines_to_json); NULL when it has none.
    sa.Column("deadlines", OptionalJson, nullable=True),
    sa.ForeignKeyConstraint(["namespace", "job_id"], ["jobs.namespace", "jobs.id"], ondelete="CASCADE"),
    # Serves ListSchedules by job and the cascade from a deleted job.
    sa.Index(None, "namespace", "job_id", "id"),
    # The dispatcher claims due schedules in next_fire_time order.
    sa.Index(None, "next_fire_time"),
)

calendars = sa.Table(
    "calendars",
    metadata,
    sa.Column("namespace", Ident, primary_key=True),
    sa.Column("id", Ident, primary_key=True),
    sa.Column("description", sa.Text(), nullable=False),
    # What it holds: zone, day rules, time ranges, the calendars it names (records.calendar_fields).
    sa.Column("rules", Json, nullable=False),
    *_audit_columns(),
)

request_ids = sa.Table(
    "request_ids",
    metadata,
    sa.Column("namespace", Ident, primary_key=True),
    sa.Column("request_id", sa.String(), primary_key=True),
    sa.Column("method", sa.String(), nullable=False),
    sa.Column("resource_id", Ident, nullable=False),
    sa.Column("create_time", UtcDateTime(), nullable=False),
)


ACTIVE = sa.text("state IN ('queued', 'running')")
# The predicates of partial indexes that queries also spell, so that their plans match the index.
RUNNING_ONLY = sa.text("state = 'running'")
FINISHED = sa.text("state NOT IN ('queued', 'running')")


def _partial(condition: str | sa.TextClause) -> dict[str, Any]:
    clause = sa.text(condition) if isinstance(condition, str) else condition
    return {"postgresql_where": clause, "sqlite_where": clause}


executions = sa.Table(
    "executions",
    metadata,
    sa.Column("namespace", Ident, primary_key=True),
    sa.Column("id", Ident, primary_key=True),
    sa.Column("job_id", Ident, nullable=False),
    # Empty when no schedule fired it. No foreign keys: history outlives jobs and schedules.
    sa.Column("schedule_id", Ident, nullable=False),
    sa.Column("state", sa.String(), nullable=False),
    sa.Column("trigger", sa.String(), nullable=False),
    sa.Column("scheduled_time", UtcDateTime(), nullable=False),
    sa.Column("due_time", UtcDateTime(), nullable=False),
    sa.Column("create_time", UtcDateTime(), nullable=False),
    sa.Column("start_time", UtcDateTime(), nullable=True),
    sa.Column("end_time", UtcDateTime(), nullable=True),
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("first_attempt_id", Ident, nullable=False),
    sa.Column("parent_execution_id", Ident, nullable=False),
    sa.Column("arguments", Json, nullable=False),
    sa.Column("exit_code", sa.Integer(), nullable=True),
    sa.Column("http_status", sa.Integer(), nullable=True),
    sa.Column("output", sa.Text(), nullable=False),
    sa.Column("output_truncated", sa.Boolean(), nullable=False),
    sa.Column("result", OptionalJson, nullable=True),
    sa.Column("error", sa.Text(), nullable=False),
    sa.Column("skip_reason", sa.String(), nullable=True),
    sa.Column("worker", sa.String(), nullable=False),
    sa.Column("lease_expires_at", UtcDateTime(), nullable=True),
    sa.Column("cancel_requested", sa.Boolean(), nullable=False),
    sa.Column("serial", sa.Boolean(), nullable=False),
    # A backfill's executions run at most group_limit at once.
    sa.Column("backfill_id", Ident, nullable=False, server_default=""),
    sa.Column("group_limit", sa.Integer(), nullable=False, server_default="0"),
    # The job's completion callback: pending until delivered or given up.
    sa.Column("callback_state", sa.String(), nullable=True),
    sa.Column("callback_attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("callback_http_status", sa.Integer(), nullable=True),
    sa.Column("callback_error", sa.Text(), nullable=False, server_default=""),
    sa.Column("callback_last_time", UtcDateTime(), nullable=True),
    sa.Column("callback_next_time", UtcDateTime(), nullable=True),
    sa.Index(
        "ux_executions_schedule_tick",
        "namespace",
        "schedule_id",
        "scheduled_time",
        unique=True,
        **_partial("trigger = 'schedule'"),
    ),
    sa.Index("ix_executions_queued_due", "due_time", **_partial("state = 'queued'")),
    sa.Index("ix_executions_running_lease", "lease_expires_at", **_partial(RUNNING_ONLY)),
    sa.Index("ix_executions_active_schedule", "namespace", "schedule_id", **_partial(ACTIVE)),
    sa.Index("ix_executions_active_job", "namespace", "job_id", **_partial(ACTIVE)),
    sa.Index("ix_executions_namespace_create_time", "namespace", "create_time", "id"),
    sa.Index("ix_executions_job_create_time", "namespace", "job_id", "create_time"),
    sa.Index("ix_executions_callback_due", "callback_next_time", **_partial("callback_state = 'pending'")),
    sa.Index(
        "ix_executions_active_backfill",
        "namespace",
        "backfill_id",
        **_partial("state IN ('queued', 'running') AND backfill_id != ''"),
    ),
    # Age retention walks finished executions oldest first; the lag view reads those that ended
    # recently (and the running ones). No index by start time: it would take an entry at every
    # insert and state change, for the lag view alone.
    sa.Index("ix_executions_finished_end_time", "end_time", **_partial(FINISHED)),
)

# Lifetime statistics of each job and schedule (kind "job" or "schedule", owner_id its id), kept
# by triggers on `executions` (migration 0011 describes them); retention and deletes leave them.
execution_counters = sa.Table(
    "execution_counters",
    metadata,
    sa.Column("namespace", Ident, primary_key=True),
    sa.Column("kind", sa.String(), primary_key=True),
    sa.Column("owner_id", Ident, primary_key=True),
    sa.Column("total", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("succeeded", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("failed", sa.BigInteger(), nullable=False, server_default="0"),
    # The started execution with the latest (start time, id), and its state.
    sa.Column("last_run_time", UtcDateTime(), nullable=True),
    sa.Column("last_run_id", Ident, nullable=True),
    sa.Column("last_run_state", sa.String(), nullable=True),
    # Seconds, of the latest executions that ended after starting (at most 100), oldest first.
    sa.Column("durations", sa.JSON().with_variant(ARRAY(DOUBLE_PRECISION()), "postgresql"), nullable=False),
)

# How many jobs and schedules (kind "job" or "schedule") each namespace holds, kept by triggers
# on those tables (migration 0013): the quota check reads one row instead of counting.
namespace_usage = sa.Table(
    "namespace_usage",
    metadata,
    sa.Column("namespace", Ident, primary_key=True),
    sa.Column("kind", sa.String(), primary_key=True),
    sa.Column("used", sa.BigInteger(), nullable=False, server_default="0"),
)

# PostgreSQL: what each statement changed, folded into the counters when its transaction commits
# (never holds a committed row). Unused on SQLite, whose triggers update the counters at once.
execution_counter_changes = sa.Table(
    "execution_counter_changes",
    metadata,
    sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("changes", Json, nullable=False),
)

# Output as it is produced, in chunks, so any replica can stream a run's output live.
execution_logs = sa.Table(
    "execution_logs",
    metadata,
    sa.Column("namespace", Ident, primary_key=True),
    sa.Column("execution_id", Ident, primary_key=True),
    sa.Column("offset", sa.BigInteger(), primary_key=True),
    sa.Column("data", sa.Text(), nullable=False),
    sa.Column("time", UtcDateTime(), nullable=False),
)

# Every state change. Writers insert with no sequence; one sequencer at a time numbers the
# committed rows, so sequences become visible in order and a reader never skips one.
events = sa.Table(
    "events",
    metadata,
    sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("sequence", sa.BigInteger(), nullable=True),
    sa.Column("type", sa.String(), nullable=False),
    sa.Column("namespace", Ident, nullable=False),
    sa.Column("resource", sa.String(), nullable=False),
    sa.Column("job_id", Ident, nullable=False),
    sa.Column("schedule_id", Ident, nullable=False),
    sa.Column("actor", sa.String(), nullable=False),
    sa.Column("time", UtcDateTime(), nullable=False),
    sa.Column("snapshot", OptionalJson, nullable=True),
    sa.Index("ux_events_sequence", "sequence", unique=True),
    sa.Index("ix_events_unsequenced", "id", **_partial("sequence IS NULL")),
    # No index by time: retention reads the oldest in sequence order (sql_events.prune), and
    # each index costs an entry at the insert and another at the numbering.
    # AUTOINCREMENT: SQLite never reuses the id of a pruned last event.
    sqlite_autoincrement=True,
)


api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", Ident, primary_key=True),
    sa.Column("description", sa.String(), nullable=False),
    sa.Column("namespaces", Json, nullable=False),
    sa.Column("role", sa.String(), nullable=False),
    # A JSON list of the executor kinds it may create and change jobs with; ["*"] is every kind.
    sa.Column("executors", Json, nullable=False),
    # Role worker: a JSON list of the queues its workers may take work from; ["*"] is every queue.
    sa.Column("queues", Json, nullable=False, server_default=sa.text("'[]'")),
    sa.Column("secret_sha256", sa.String(), nullable=False),
    sa.Column("create_time", UtcDateTime(), nullable=False),
    sa.Column("revoke_time", UtcDateTime(), nullable=True),
)

# Random values every replica shares, each made once by whichever server needs it first.
server_secrets = sa.Table(
    "server_secrets",
    metadata,
    sa.Column("name", sa.String(), primary_key=True),
    sa.Column("value", sa.String(), nullable=False),
)

# Every running server process, heartbeating; rows silent for long are pruned.
replicas = sa.Table(
    "replicas",
    metadata,
    sa.Column("id", Ident, primary_key=True),
    sa.Column("hostname", sa.String(), nullable=False),
    sa.Column("pid", sa.Integer(), nullable=False),
    sa.Column("version", sa.String(), nullable=False),
    sa.Column("roles", sa.String(), nullable=False),  # comma-separated
    # Its own interval: whether it is alive is judged against it.
    sa.Column("heartbeat_seconds", sa.Float(), nullable=False),
    sa.Column("started_at", UtcDateTime(), nullable=False),
    sa.Column("heartbeat_at", UtcDateTime(), nullable=False),
    # Its background loops that are not running, comma-separated; "" while all run.
    sa.Column("loops_down", sa.String(), nullable=False, server_default=""),
    sa.Index("ix_replicas_heartbeat_at", "heartbeat_at"),
)


# The remote workers with a WorkerService stream open, one row per stream, kept by the replica
# holding it (`storage.sql_remote_registry`), for the cluster status.
remote_workers = sa.Table(
    "remote_workers",
    metadata,
    sa.Column("session", Ident, primary_key=True),
    sa.Column("replica", sa.String(), nullable=False),
    sa.Column("identity", sa.String(), nullable=False),
    sa.Column("queues", Json, nullable=False),
    sa.Column("namespaces", Json, nullable=True),  # NULL: every namespace
    sa.Column("free_slots", sa.Integer(), nullable=False),
    sa.Column("running", sa.Integer(), nullable=False),
    sa.Column("agent", sa.String(), nullable=False),
    sa.Column("connect_time", UtcDateTime(), nullable=False),
    sa.Column("report_time", UtcDateTime(), nullable=False),
    sa.Index("ix_remote_workers_report_time", "report_time"),
)


# Alerts (migration 0020): where notifications go, which alerts go where, what they opened, and
# each notification sent (storage.sql_notifications).
notification_routes = sa.Table(
    "notification_routes",
    metadata,
    sa.Column("namespace", Ident, primary_key=True),
    sa.Column("id", Ident, primary_key=True),
    sa.Column("description", sa.Text(), nullable=False),
    # {"kind": "webhook" | "slack" | "pagerduty" | "email", ...}: names of secrets, never values.
    sa.Column("destination", Json, nullable=False),
    sa.Column("max_per_hour", sa.Integer(), nullable=False),
    *_audit_columns(),
)

notification_rules = sa.Table(
    "notification_rules",
    metadata,
    sa.Column("namespace", Ident, primary_key=True),
    sa.Column("id", Ident, primary_key=True),
    sa.Column("description", sa.Text(), nullable=False),
    sa.Column("route_id", Ident, nullable=False),
    sa.Column("kinds", Json, nullable=False),
    sa.Column("job_id", Ident, nullable=False),  # "": any
    sa.Column("schedule_id", Ident, nullable=False),  # "": any
    sa.Column("labels", Json, nullable=False),
    *_audit_columns(),
    sa.ForeignKeyConstraint(
        ["namespace", "route_id"], ["notification_routes.namespace", "notification_routes.id"]
    ),
    sa.Index("ix_notification_rules_route", "namespace", "route_id"),
)

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

notification_incidents = sa.Table(
    "notification_incidents",
    metadata,
    sa.Column("seq", _BigId, primary_key=True, autoincrement=True),
    sa.Column("namespace", Ident, nullable=False),
    sa.Column("rule_id", Ident, nullable=False),
    sa.Column("route_id", Ident, nullable=False),
    sa.Column("job_id", Ident, nullable=False),
    sa.Column("schedule_id", Ident, nullable=False),
    # What resolves it and what it counts: "failure" (FAILED, TIMED_OUT, LOST) or an alert kind.
    sa.Column("family", sa.String(), nullable=False),
    sa.Column("kind", sa.String(), nullable=False),
    sa.Column("summary", sa.Text(), nullable=False),
    sa.Column("alerts", sa.BigInteger(), nullable=False),
    sa.Column("open_time", UtcDateTime(), nullable=False),
    sa.Column("resolve_time", UtcDateTime(), nullable=True),
    sa.Column("dedup_key", sa.String(), nullable=False),
    # The check-in it is about (migration 0021); "" for jobs.
    sa.Column("check_in_id", Ident, nullable=False, server_default=""),
    # Why it was resolved, for people (migration 0023); "" while open.
    sa.Column("resolve_reason", sa.Text(), nullable=False, server_default=""),
    sa.Index(
        "ux_notification_incidents_open",
        "namespace",
        "rule_id",
        "job_id",
        "schedule_id",
        "check_in_id",
        "family",
        unique=True,
        **_partial("resolve_time IS NULL"),
    ),
    sa.Index("ix_notification_incidents_schedule", "namespace", "schedule_id", "seq"),
    sqlite_autoincrement=True,
)

notification_deliveries = sa.Table(
    "notification_deliveries",
    metadata,
    sa.Column("seq", _BigId, primary_key=True, autoincrement=True),
    sa.Column("namespace", Ident, nullable=False),
    sa.Column("route_id", Ident, nullable=False),
    sa.Column("incident_seq", sa.BigInteger(), nullable=False),
    sa.Column("kind", sa.String(), nullable=False),
    sa.Column("resolve", sa.Boolean(), nullable=False),
    # What the notification says (core.alerts.Alert), no secrets.
    sa.Column("alert", Json, nullable=False),
    sa.Column("state", sa.String(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("http_status", sa.Integer(), nullable=True),
    sa.Column("error", sa.Text(), nullable=False),
    sa.Column("summary", sa.Text(), nullable=False),
    sa.Column("create_time", UtcDateTime(), nullable=False),
    sa.Column("last_attempt_time", UtcDateTime(), nullable=True),
    sa.Column("next_attempt_time", UtcDateTime(), nullable=True),
    sa.Index("ix_notification_deliveries_due", "next_attempt_time", **_partial("state = 'pending'")),
    sa.Index("ix_notification_deliveries_route", "namespace", "route_id", "create_time"),
    sa.Index("ix_notification_deliveries_namespace", "namespace", "seq"),
    sqlite_autoincrement=True,
)

# How far the notifier has read the events (one row, "notifier").
notification_cursor = sa.Table(
    "notification_cursor",
    metadata,
    sa.Column("name", sa.String(), primary_key=True),
    sa.Column("sequence", sa.BigInteger(), nullable=False),
)

# Each missed deadline of a tick, once: inserting the row is the claim of the replica that sends
# its event.
deadline_misses = sa.Table(
    "deadline_misses",
    metadata,
    sa.Column("namespace", Ident, primary_key=True),
    sa.Column("schedule_id", Ident, primary_key=True),
    sa.Column("scheduled_time", UtcDateTime(), primary_key=True),
    sa.Column("kind", sa.String(), primary_key=True),
    sa.Column("execution_id", Ident, nullable=False),
    sa.Column("deadline", UtcDateTime(), nullable=False),
    sa.Column("time", UtcDateTime(), nullable=False),
    sa.Index("ix_deadline_misses_time", "time"),
)

# Check-ins (migration 0021): dead man's switches for work cronwire does not run.
check_ins = sa.Table(
    "check_ins",
    metadata,
    sa.Column("namespace", Ident, primary_key=True),
    sa.Column("id", Ident, primary_key=True),
    sa.Column("description", sa.Text(), nullable=False),
    sa.Column("trigger", Json, nullable=False),
    sa.Column("time_zone", sa.String(), nullable=False),
    sa.Column("grace_seconds", sa.Float(), nullable=False),
    sa.Column("labels", Json, nullable=False),
    # The ping token's SHA-256, hex; the token itself is shown once, at create.
    sa.Column("token_sha256", sa.String(), nullable=False, unique=True),
    sa.Column("next_expected_time", UtcDateTime(), nullable=True),
    sa.Column("last_ping_time", UtcDateTime(), nullable=True),
    sa.Column("last_ping_kind", sa.String(), nullable=True),
    sa.Column("last_start_time", UtcDateTime(), nullable=True),
    sa.Column("last_duration_seconds", sa.Float(), nullable=True),
    sa.Column("missed", sa.BigInteger(), nullable=False),
    sa.Column("create_time", UtcDateTime(), nullable=False),
    sa.Column("etag", sa.String(), nullable=False),
    sa.Index("ix_check_ins_next_expected_time", "next_expected_time"),
)

check_in_pings = sa.Table(
    "check_in_pings",
    metadata,
    sa.Column("seq", _BigId, primary_key=True, autoincrement=True),
    sa.Column("namespace", Ident, nullable=False),
    sa.Column("check_in_id", Ident, nullable=False),
    sa.Column("kind", sa.String(), nullable=False),
    sa.Column("time", UtcDateTime(), nullable=False),
    sa.Column("duration_seconds", sa.Float(), nullable=True),
    sa.Index("ix_check_in_pings_check_in", "namespace", "check_in_id", "seq"),
    sqlite_autoincrement=True,
)
