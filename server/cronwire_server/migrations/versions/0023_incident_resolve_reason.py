"""Incidents keep why they were resolved.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-03

`notification_incidents.resolve_reason` says, for people, what resolved an incident: the success
that did, or the deletion of its job, schedule, check-in or rule (deleting one resolves its open
incidents). Incidents resolved before keep "" (not known).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | Sequence[str] | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "notification_incidents",
        sa.Column("resolve_reason", sa.Text(), nullable=False, server_default=""),
    )


def downgrade() -> None:
    op.drop_column("notification_incidents", "resolve_reason")
