"""Check-ins: dead man's switches for work cronwire does not run.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-03

`check_ins` holds one row per check-in: its trigger and zone (as a schedule's), its grace, labels,
the digest of its ping token (unique: a ping finds its check-in by it), the tick awaited
(`next_expected_time`, indexed: the deadline watch reads the overdue ones) and its last ping.
`check_in_pings` keeps each ping. An incident may be about a check-in (`check_in_id`; "" for jobs),
so the one-open-incident index takes it in.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0021"
down_revision: str | Sequence[str] | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Ident = sa.String().with_variant(sa.String(collation="C"), "postgresql")
JSON = sa.JSON().with_variant(JSONB(), "postgresql")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.DateTime(timezone=True)
OPEN = sa.text("resolve_time IS NULL")


def upgrade() -> None:
    op.create_table(
        "check_ins",
        sa.Column("namespace", Ident, nullable=False),
        sa.Column("id", Ident, nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("trigger", JSON, nullable=False),
        sa.Column("time_zone", sa.String(), nullable=False),
        sa.Column("grace_seconds", sa.Float(), nullable=False),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("token_sha256", sa.String(), nullable=False),
        sa.Column("next_expected_time", Time, nullable=True),
        sa.Column("last_ping_time", Time, nullable=True),
        sa.Column("last_ping_kind", sa.String(), nullable=True),
        sa.Column("last_start_time", Time, nullable=True),
        sa.Column("last_duration_seconds", sa.Float(), nullable=True),
        sa.Column("missed", sa.BigInteger(), nullable=False),
        sa.Column("create_time", Time, nullable=False),
        sa.Column("etag", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "id", name="pk_check_ins"),
        sa.UniqueConstraint("token_sha256", name="uq_check_ins_token_sha256"),
    )
    op.create_index("ix_check_ins_next_expected_time", "check_ins", ["next_expected_time"])
    op.create_table(
        "check_in_pings",
        sa.Column("seq", BigId, nullable=False, autoincrement=True),
        sa.Column("namespace", Ident, nullable=False),
        sa.Column("check_in_id", Ident, nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("time", Time, nullable=False),
        sa.Column("duration_seconds", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_check_in_pings"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_check_in_pings_check_in", "check_in_pings", ["namespace", "check_in_id", "seq"])
    op.add_column(
        "notification_incidents", sa.Column("check_in_id", Ident, nullable=False, server_default="")
    )
    op.drop_index("ux_notification_incidents_open", table_name="notification_incidents")
    op.create_index(
        "ux_notification_incidents_open",
        "notification_incidents",
        ["namespace", "rule_id", "job_id", "schedule_id", "check_in_id", "family"],
        unique=True,
        postgresql_where=OPEN,
        sqlite_where=OPEN,
    )


def downgrade() -> None:
    op.drop_index("ux_notification_incidents_open", table_name="notification_incidents")
    op.create_index(
        "ux_notification_incidents_open",
        "notification_incidents",
        ["namespace", "rule_id", "job_id", "schedule_id", "family"],
        unique=True,
        postgresql_where=OPEN,
        sqlite_where=OPEN,
    )
    op.drop_column("notification_incidents", "check_in_id")
    op.drop_table("check_in_pings")
    op.drop_table("check_ins")
