"""Executions lose their index by start time.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-04

An index on every execution takes an entry at its insert and at each state change (claim and
finish: none of them can be a heap-only update, since each changes indexed columns), about three
per run, for the lag view alone. The lag view now reads the running executions and those ended
since its window's start, through the partial indexes the queue and retention keep anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0025"
down_revision: str | Sequence[str] | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_executions_start_time", table_name="executions")


def downgrade() -> None:
    op.create_index("ix_executions_start_time", "executions", ["start_time"])
