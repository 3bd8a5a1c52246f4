"""Operations: replica heartbeats and execution retention.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26

Self-contained on purpose, like 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPTIONAL_JSON = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
IDENT = sa.String().with_variant(sa.String(collation="C"), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
FINISHED = sa.text("state NOT IN ('queued', 'running')")


def upgrade() -> None:
    op.create_table(
        "replicas",
        sa.Column("id", IDENT, nullable=False),
        sa.Column("hostname", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("roles", sa.String(), nullable=False),
        sa.Column("heartbeat_seconds", sa.Float(), nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("heartbeat_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_replicas"),
    )
    op.create_index("ix_replicas_heartbeat_at", "replicas", ["heartbeat_at"])
    # Age retention walks finished executions oldest first; the lag view reads recent starts.
    op.create_index(
        "ix_executions_finished_end_time",
        "executions",
        ["end_time"],
        postgresql_where=FINISHED,
        sqlite_where=FINISHED,
    )
    op.create_index("ix_executions_start_time", "executions", ["start_time"])
    # A job's own retention policy, in place of the server's.
    op.add_column("jobs", sa.Column("execution_retention", OPTIONAL_JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "execution_retention")
    op.drop_index("ix_executions_start_time", "executions")
    op.drop_index("ix_executions_finished_end_time", "executions")
    op.drop_table("replicas")
