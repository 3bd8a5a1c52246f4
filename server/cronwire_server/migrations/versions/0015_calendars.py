"""Calendars, and the schedules that skip or keep to them.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03

`calendars` holds one row per calendar: its description and what it holds (`rules`, JSON: time
zone, day rules, time ranges, the calendars it names). `schedules` gains the calendar ids it
excludes and keeps to (`exclude_calendars`, `only_on_calendars`, JSON lists; empty for every
existing schedule) and `calendars`, the calendars those reach as they were at the last change
(NULL: it names none), so that deciding on a tick reads nothing but the schedule's row.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Ident = sa.String().with_variant(sa.String(collation="C"), "postgresql")
JSON = sa.JSON().with_variant(JSONB(), "postgresql")
OPTIONAL_JSON = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

# Not batch operations on `schedules`: on SQLite they copy the table, and the copy loses its
# triggers (the namespace counters'); both databases add and drop a column in place.


def upgrade() -> None:
    op.create_table(
        "calendars",
        sa.Column("namespace", Ident, nullable=False),
        sa.Column("id", Ident, nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("rules", JSON, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("etag", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "id", name="pk_calendars"),
    )
    op.add_column("schedules", sa.Column("exclude_calendars", JSON, nullable=False, server_default="[]"))
    op.add_column("schedules", sa.Column("only_on_calendars", JSON, nullable=False, server_default="[]"))
    op.add_column("schedules", sa.Column("calendars", OPTIONAL_JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("schedules", "calendars")
    op.drop_column("schedules", "only_on_calendars")
    op.drop_column("schedules", "exclude_calendars")
    op.drop_table("calendars")
