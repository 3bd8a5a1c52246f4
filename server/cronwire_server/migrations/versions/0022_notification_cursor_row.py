"""The notifier's cursor row exists from the migration on.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-03

Before, the notifier's first pass created it at the latest event. A first pass that came late (a
busy replica, a database that was briefly unavailable) put it past events that had happened since
the server started, so their alerts were never sent. Now the row is written here, at the latest
event when the migration runs: alerts start from the upgrade, not from the whole history, and
nothing that happens after it is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0022"
down_revision: str | Sequence[str] | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "INSERT INTO notification_cursor (name, sequence) "
        "SELECT 'notifier', coalesce(max(sequence), 0) FROM events "
        "WHERE NOT EXISTS (SELECT 1 FROM notification_cursor WHERE name = 'notifier')"
    )


def downgrade() -> None:
    pass  # the row is the table's to keep; 0020's downgrade drops the table
