"""Executions, and when each schedule was last resumed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Self-contained on purpose, like 0001.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
OPTIONAL_JSON = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
IDENT = sa.String().with_variant(sa.String(collation="C"), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
ACTIVE = "state IN ('queued', 'running')"


def _where(condition: str) -> dict[str, Any]:
    return {"postgresql_where": sa.text(condition), "sqlite_where": sa.text(condition)}


def upgrade() -> None:
    with op.batch_alter_table("schedules") as batch:
        batch.add_column(sa.Column("resumed_at", TIMESTAMP, nullable=True))

    op.create_table(
        "executions",
        sa.Column("namespace", IDENT, nullable=False),
        sa.Column("id", IDENT, nullable=False),
        sa.Column("job_id", IDENT, nullable=False),
        sa.Column("schedule_id", IDENT, nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("trigger", sa.String(), nullable=False),
        sa.Column("scheduled_time", TIMESTAMP, nullable=False),
        sa.Column("due_time", TIMESTAMP, nullable=False),
        sa.Column("create_time", TIMESTAMP, nullable=False),
        sa.Column("start_time", TIMESTAMP, nullable=True),
        sa.Column("end_time", TIMESTAMP, nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("first_attempt_id", IDENT, nullable=False),
        sa.Column("parent_execution_id", IDENT, nullable=False),
        sa.Column("arguments", JSON, nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("output_truncated", sa.Boolean(), nullable=False),
        sa.Column("result", OPTIONAL_JSON, nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("skip_reason", sa.String(), nullable=True),
        sa.Column("worker", sa.String(), nullable=False),
        sa.Column("lease_expires_at", TIMESTAMP, nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("serial", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "id", name="pk_executions"),
    )
    # A schedule's tick is recorded once, whichever replica fires it.
    op.create_index(
        "ux_executions_schedule_tick",
        "executions",
        ["namespace", "schedule_id", "scheduled_time"],
        unique=True,
        **_where("trigger = 'schedule'"),
    )
    op.create_index("ix_executions_queued_due", "executions", ["due_time"], **_where("state = 'queued'"))
    op.create_index(
        "ix_executions_running_lease", "executions", ["lease_expires_at"], **_where("state = 'running'")
    )
    op.create_index(
        "ix_executions_active_schedule", "executions", ["namespace", "schedule_id"], **_where(ACTIVE)
    )
    op.create_index("ix_executions_active_job", "executions", ["namespace", "job_id"], **_where(ACTIVE))
    op.create_index("ix_executions_namespace_create_time", "executions", ["namespace", "create_time", "id"])
    op.create_index("ix_executions_job_create_time", "executions", ["namespace", "job_id", "create_time"])


def downgrade() -> None:
    op.drop_table("executions")
    with op.batch_alter_table("schedules") as batch:
        batch.drop_column("resumed_at")
