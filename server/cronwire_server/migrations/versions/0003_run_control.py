"""Run control: backfill groups, completion-callback deliveries, live output chunks.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Self-contained on purpose, like 0001.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IDENT = sa.String().with_variant(sa.String(collation="C"), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def _where(condition: str) -> dict[str, Any]:
    return {"postgresql_where": sa.text(condition), "sqlite_where": sa.text(condition)}


def upgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.add_column(sa.Column("backfill_id", IDENT, nullable=False, server_default=""))
        batch.add_column(sa.Column("group_limit", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("callback_state", sa.String(), nullable=True))
        batch.add_column(sa.Column("callback_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("callback_http_status", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("callback_error", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("callback_last_time", TIMESTAMP, nullable=True))
        batch.add_column(sa.Column("callback_next_time", TIMESTAMP, nullable=True))
    op.create_index(
        "ix_executions_callback_due",
        "executions",
        ["callback_next_time"],
        **_where("callback_state = 'pending'"),
    )
    op.create_index(
        "ix_executions_active_backfill",
        "executions",
        ["namespace", "backfill_id"],
        **_where("state IN ('queued', 'running') AND backfill_id != ''"),
    )
    op.create_table(
        "execution_logs",
        sa.Column("namespace", IDENT, nullable=False),
        sa.Column("execution_id", IDENT, nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("time", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("namespace", "execution_id", "offset", name="pk_execution_logs"),
    )


def downgrade() -> None:
    op.drop_table("execution_logs")
    op.drop_index("ix_executions_active_backfill", table_name="executions")
    op.drop_index("ix_executions_callback_due", table_name="executions")
    with op.batch_alter_table("executions") as batch:
        for column in (
            "callback_next_time",
            "callback_last_time",
            "callback_error",
            "callback_http_status",
            "callback_attempts",
            "callback_state",
            "group_limit",
            "backfill_id",
        ):
            batch.drop_column(column)
