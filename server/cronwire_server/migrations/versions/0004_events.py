"""Events: every state change, in commit order.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

Self-contained on purpose, like 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPTIONAL_JSON = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
IDENT = sa.String().with_variant(sa.String(collation="C"), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False, autoincrement=True
        ),
        sa.Column("sequence", sa.BigInteger(), nullable=True),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("namespace", IDENT, nullable=False),
        sa.Column("resource", sa.String(), nullable=False),
        sa.Column("job_id", IDENT, nullable=False),
        sa.Column("schedule_id", IDENT, nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("time", TIMESTAMP, nullable=False),
        sa.Column("snapshot", OPTIONAL_JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sqlite_autoincrement=True,
    )
    op.create_index("ux_events_sequence", "events", ["sequence"], unique=True)
    where = sa.text("sequence IS NULL")
    op.create_index("ix_events_unsequenced", "events", ["id"], postgresql_where=where, sqlite_where=where)
    op.create_index("ix_events_time", "events", ["time"])
    if op.get_bind().dialect.name == "postgresql":
        # The sequencer learns of new events at commit, whichever statement wrote them.
        op.execute(
            "CREATE FUNCTION cronwire_notify_events() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_notify('cronwire_events_new', ''); RETURN NULL; END $$"
        )
        op.execute(
            "CREATE TRIGGER events_notify AFTER INSERT ON events "
            "FOR EACH STATEMENT EXECUTE FUNCTION cronwire_notify_events()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER events_notify ON events")
        op.execute("DROP FUNCTION cronwire_notify_events()")
    op.drop_table("events")
