"""Alerts: notification routes and rules, incidents, deliveries, and schedule deadlines.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-03

`notification_routes` and `notification_rules` are resources of a namespace (a route's
destination is JSON; its secrets are names of secrets, never values). `notification_incidents`
holds what alerts opened, at most one open per (rule, job, schedule, family) by a partial unique
index; `notification_deliveries` each notification and what became of it, the pending ones
indexed by their next attempt. `notification_cursor` is how far the notifier has read the event
history (one row, locked by the replica that reads). `deadline_misses` holds each missed deadline
of a tick once (its key is the claim: a replica that inserts it sends the event). `schedules` gains
`deadlines` (JSON; NULL: none).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0020"
down_revision: str | Sequence[str] | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Ident = sa.String().with_variant(sa.String(collation="C"), "postgresql")
JSON = sa.JSON().with_variant(JSONB(), "postgresql")
OPTIONAL_JSON = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.DateTime(timezone=True)


def _audit() -> list[sa.Column[object]]:
    return [
        sa.Column("create_time", Time, nullable=False),
        sa.Column("update_time", Time, nullable=False),
        sa.Column("etag", sa.String(), nullable=False),
    ]


def upgrade() -> None:
    # Not batch mode on `schedules`: on SQLite it copies the table and loses its triggers.
    op.add_column("schedules", sa.Column("deadlines", OPTIONAL_JSON, nullable=True))
    op.create_table(
        "notification_routes",
        sa.Column("namespace", Ident, nullable=False),
        sa.Column("id", Ident, nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("destination", JSON, nullable=False),
        sa.Column("max_per_hour", sa.Integer(), nullable=False),
        *_audit(),
        sa.PrimaryKeyConstraint("namespace", "id", name="pk_notification_routes"),
    )
    op.create_table(
        "notification_rules",
        sa.Column("namespace", Ident, nullable=False),
        sa.Column("id", Ident, nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("route_id", Ident, nullable=False),
        sa.Column("kinds", JSON, nullable=False),
        sa.Column("job_id", Ident, nullable=False),
        sa.Column("schedule_id", Ident, nullable=False),
        sa.Column("labels", JSON, nullable=False),
        *_audit(),
        sa.PrimaryKeyConstraint("namespace", "id", name="pk_notification_rules"),
        sa.ForeignKeyConstraint(
            ["namespace", "route_id"],
            ["notification_routes.namespace", "notification_routes.id"],
            name="fk_notification_rules_namespace_route_id_notification_routes",
        ),
    )
    op.create_index("ix_notification_rules_route", "notification_rules", ["namespace", "route_id"])
    op.create_table(
        "notification_incidents",
        sa.Column("seq", BigId, nullable=False, autoincrement=True),
        sa.Column("namespace", Ident, nullable=False),
        sa.Column("rule_id", Ident, nullable=False),
        sa.Column("route_id", Ident, nullable=False),
        sa.Column("job_id", Ident, nullable=False),
        sa.Column("schedule_id", Ident, nullable=False),
        sa.Column("family", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("alerts", sa.BigInteger(), nullable=False),
        sa.Column("open_time", Time, nullable=False),
        sa.Column("resolve_time", Time, nullable=True),
        sa.Column("dedup_key", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_notification_incidents"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ux_notification_incidents_open",
        "notification_incidents",
        ["namespace", "rule_id", "job_id", "schedule_id", "family"],
        unique=True,
        postgresql_where=sa.text("resolve_time IS NULL"),
        sqlite_where=sa.text("resolve_time IS NULL"),
    )
    op.create_index(
        "ix_notification_incidents_schedule", "notification_incidents", ["namespace", "schedule_id", "seq"]
    )
    op.create_table(
        "notification_deliveries",
        sa.Column("seq", BigId, nullable=False, autoincrement=True),
        sa.Column("namespace", Ident, nullable=False),
        sa.Column("route_id", Ident, nullable=False),
        sa.Column("incident_seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("resolve", sa.Boolean(), nullable=False),
        sa.Column("alert", JSON, nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("create_time", Time, nullable=False),
        sa.Column("last_attempt_time", Time, nullable=True),
        sa.Column("next_attempt_time", Time, nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_notification_deliveries"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_notification_deliveries_due",
        "notification_deliveries",
        ["next_attempt_time"],
        postgresql_where=sa.text("state = 'pending'"),
        sqlite_where=sa.text("state = 'pending'"),
    )
    op.create_index(
        "ix_notification_deliveries_route",
        "notification_deliveries",
        ["namespace", "route_id", "create_time"],
    )
    op.create_index("ix_notification_deliveries_namespace", "notification_deliveries", ["namespace", "seq"])
    op.create_table(
        "notification_cursor",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_notification_cursor"),
    )
    op.create_table(
        "deadline_misses",
        sa.Column("namespace", Ident, nullable=False),
        sa.Column("schedule_id", Ident, nullable=False),
        sa.Column("scheduled_time", Time, nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("execution_id", Ident, nullable=False),
        sa.Column("deadline", Time, nullable=False),
        sa.Column("time", Time, nullable=False),
        sa.PrimaryKeyConstraint(
            "namespace", "schedule_id", "scheduled_time", "kind", name="pk_deadline_misses"
        ),
    )
    op.create_index("ix_deadline_misses_time", "deadline_misses", ["time"])


def downgrade() -> None:
    op.drop_table("deadline_misses")
    op.drop_table("notification_cursor")
    op.drop_table("notification_deliveries")
    op.drop_table("notification_incidents")
    op.drop_table("notification_rules")
    op.drop_table("notification_routes")
    op.drop_column("schedules", "deadlines")
