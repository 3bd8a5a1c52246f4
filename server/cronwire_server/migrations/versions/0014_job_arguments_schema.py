"""Jobs may declare the JSON Schema of their runs' arguments.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03

NULL (every existing job): any arguments, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


# Not a batch operation: on SQLite that copies the table, and the copy loses its triggers (the
# namespace counters'); both databases add and drop a column in place.


def upgrade() -> None:
    op.add_column("jobs", sa.Column("arguments_schema", JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "arguments_schema")
