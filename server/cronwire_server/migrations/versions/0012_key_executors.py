"""API keys carry the executor kinds they may create and change jobs with.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03

Existing editor and admin keys keep every kind they could use before (`["*"]`), so an upgrade
breaks no one's deployment; operators narrow them by making new keys. Viewer keys, which change
nothing, get the default of new keys (`["http", "noop"]`), which is also the column's default.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(
            sa.Column("executors", JSON, nullable=False, server_default=sa.text("""'["http", "noop"]'"""))
        )
    keys = sa.table("api_keys", sa.column("role", sa.String()), sa.column("executors", JSON))
    op.execute(keys.update().where(keys.c.role.in_(["EDITOR", "ADMIN"])).values(executors=["*"]))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("executors")
