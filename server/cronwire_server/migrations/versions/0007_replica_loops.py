"""Replicas say which of their background loops are down.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Comma-separated loop names, like `roles`; empty while every loop runs.
    op.add_column("replicas", sa.Column("loops_down", sa.String(), nullable=False, server_default=""))


def downgrade() -> None:
    op.drop_column("replicas", "loops_down")
