"""The remote workers connected to the replicas, for the cluster status.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-03

One row per open WorkerService stream, written by the replica holding it: at connect, every
few seconds while it lasts (free slots, runs), and removed at its end. Rows a replica that died
left behind are removed by the others once they are a minute old.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0019"
down_revision: str | Sequence[str] | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
IDENT = sa.String().with_variant(sa.String(collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "remote_workers",
        sa.Column("session", IDENT, primary_key=True),
        sa.Column("replica", sa.String(), nullable=False),
        sa.Column("identity", sa.String(), nullable=False),
        sa.Column("queues", JSON, nullable=False),
        sa.Column("namespaces", JSON, nullable=True),
        sa.Column("free_slots", sa.Integer(), nullable=False),
        sa.Column("running", sa.Integer(), nullable=False),
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("connect_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("report_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_remote_workers_report_time", "remote_workers", ["report_time"])


def downgrade() -> None:
    op.drop_index("ix_remote_workers_report_time", table_name="remote_workers")
    op.drop_table("remote_workers")
