"""Events lose their index by time.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-04

Every event wrote an entry into `ix_events_time` twice (its insert and its numbering), a third of
the index entries each event costs, for the retention's prune alone. The prune now reads the
oldest events in sequence order instead (`storage.sql_events.prune`), which the index of
sequences serves.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0024"
down_revision: str | Sequence[str] | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_events_time", table_name="events")


def downgrade() -> None:
    op.create_index("ix_events_time", "events", ["time"])
