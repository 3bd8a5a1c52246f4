"""Jobs, schedules and request ids.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Self-contained on purpose: it must create the same schema however
`storage/tables.py` evolves later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
IDENT = sa.String().with_variant(sa.String(collation="C"), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def _audit_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("create_time", TIMESTAMP, nullable=False),
        sa.Column("update_time", TIMESTAMP, nullable=False),
        sa.Column("etag", sa.String(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("namespace", IDENT, nullable=False),
        sa.Column("id", IDENT, nullable=False),
        sa.Column("executor", sa.String(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("parameters", JSON, nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=True),
        sa.Column("retry_policy", JSON, nullable=True),
        sa.Column("max_concurrency", sa.Integer(), nullable=False),
        sa.Column("dependents", JSON, nullable=False),
        sa.Column("callback", JSON, nullable=True),
        sa.Column("labels", JSON, nullable=False),
        *_audit_columns(),
        sa.PrimaryKeyConstraint("namespace", "id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_namespace_executor_id", "jobs", ["namespace", "executor", "id"])

    op.create_table(
        "schedules",
        sa.Column("namespace", IDENT, nullable=False),
        sa.Column("id", IDENT, nullable=False),
        sa.Column("job_id", IDENT, nullable=False),
        sa.Column("trigger", JSON, nullable=False),
        sa.Column("time_zone", sa.String(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("start_time", TIMESTAMP, nullable=True),
        sa.Column("end_time", TIMESTAMP, nullable=True),
        sa.Column("jitter_seconds", sa.Float(), nullable=True),
        sa.Column("misfire_policy", sa.String(), nullable=False),
        sa.Column("catchup_window_seconds", sa.Float(), nullable=False),
        sa.Column("overlap_policy", sa.String(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("pause_reason", sa.Text(), nullable=False),
        sa.Column("arguments", JSON, nullable=False),
        sa.Column("next_fire_time", TIMESTAMP, nullable=True),
        *_audit_columns(),
        sa.PrimaryKeyConstraint("namespace", "id", name="pk_schedules"),
        sa.ForeignKeyConstraint(
            ["namespace", "job_id"],
            ["jobs.namespace", "jobs.id"],
            name="fk_schedules_namespace_job_id_jobs",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_schedules_namespace_job_id_id", "schedules", ["namespace", "job_id", "id"])
    op.create_index("ix_schedules_next_fire_time", "schedules", ["next_fire_time"])

    op.create_table(
        "request_ids",
        sa.Column("namespace", IDENT, nullable=False),
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("resource_id", IDENT, nullable=False),
        sa.Column("create_time", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("namespace", "request_id", name="pk_request_ids"),
    )


def downgrade() -> None:
    op.drop_table("request_ids")
    op.drop_index("ix_schedules_next_fire_time", table_name="schedules")
    op.drop_index("ix_schedules_namespace_job_id_id", table_name="schedules")
    op.drop_table("schedules")
    op.drop_index("ix_jobs_namespace_executor_id", table_name="jobs")
    op.drop_table("jobs")
