"""How many jobs and schedules each namespace holds, as counters the database keeps.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03

`namespace_usage` has a row per namespace and kind ('job' or 'schedule') with the number of such
rows the namespace holds (backfilled here from the existing rows). Triggers on `jobs` and
`schedules` keep it exact whatever statement inserts or deletes them (a job's schedules deleted
with it by ON DELETE CASCADE included), so the quota check of a create reads one row instead of
counting the namespace.

The store takes the counter rows' locks before it inserts or deletes (a create batch by an upsert
that returns the counts, in namespace order; a delete by SELECT ... FOR UPDATE, 'job' before
'schedule'): creates racing at a namespace's limit, on any replicas, wait for each other and the
limit is exact.

SQLite: row triggers. PostgreSQL: statement triggers with transition tables, one counter update per
statement however many rows it inserts or deletes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Ident = sa.String().with_variant(sa.String(collation="C"), "postgresql")
KINDS = (("job", "jobs"), ("schedule", "schedules"))


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "namespace_usage",
        sa.Column("namespace", Ident, nullable=False),
        sa.Column("kind", sa.String(), nullable=False),  # 'job' or 'schedule'
        sa.Column("used", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("namespace", "kind", name="pk_namespace_usage"),
    )
    if postgres:
        for statement in _POSTGRES_FUNCTIONS:
            op.execute(statement)
    for kind, table in KINDS:
        for statement in _postgres_triggers(kind, table) if postgres else _sqlite_triggers(kind, table):
            op.execute(statement)
        # After the triggers: on PostgreSQL, creating them locks the table against writes until
        # the migration commits, so no row is counted twice or missed.
        op.execute(
            f"INSERT INTO namespace_usage (namespace, kind, used) "
            f"SELECT namespace, '{kind}', count(*) FROM {table} GROUP BY namespace"
        )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for kind, table in KINDS:
        for event in ("insert", "delete"):
            trigger = f"cronwire_usage_{kind}_{event}"
            op.execute(f"DROP TRIGGER {trigger} ON {table}" if postgres else f"DROP TRIGGER {trigger}")
    if postgres:
        op.execute("DROP FUNCTION cronwire_usage_add()")
        op.execute("DROP FUNCTION cronwire_usage_remove()")
    op.drop_table("namespace_usage")


_POSTGRES_FUNCTIONS = (
    """
CREATE FUNCTION cronwire_usage_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO namespace_usage (namespace, kind, used)
    SELECT namespace, TG_ARGV[0], count(*) FROM new_rows GROUP BY namespace ORDER BY namespace
    ON CONFLICT (namespace, kind) DO UPDATE SET used = namespace_usage.used + excluded.used;
    RETURN NULL;
END
$$
""",
    """
CREATE FUNCTION cronwire_usage_remove() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE namespace_usage AS u SET used = u.used - gone.n
    FROM (SELECT namespace, count(*) AS n FROM old_rows GROUP BY namespace) AS gone
    WHERE u.namespace = gone.namespace AND u.kind = TG_ARGV[0];
    RETURN NULL;
END
$$
""",
)


def _postgres_triggers(kind: str, table: str) -> list[str]:
    return [
        f"""CREATE TRIGGER cronwire_usage_{kind}_insert AFTER INSERT ON {table}
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION cronwire_usage_add('{kind}')""",
        f"""CREATE TRIGGER cronwire_usage_{kind}_delete AFTER DELETE ON {table}
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION cronwire_usage_remove('{kind}')""",
    ]


def _sqlite_triggers(kind: str, table: str) -> list[str]:
    return [
        f"""CREATE TRIGGER cronwire_usage_{kind}_insert AFTER INSERT ON {table} BEGIN
    INSERT INTO namespace_usage (namespace, kind, used) VALUES (NEW.namespace, '{kind}', 1)
    ON CONFLICT (namespace, kind) DO UPDATE SET used = used + 1;
END""",
        f"""CREATE TRIGGER cronwire_usage_{kind}_delete AFTER DELETE ON {table} BEGIN
    UPDATE namespace_usage SET used = used - 1 WHERE namespace = OLD.namespace AND kind = '{kind}';
END""",
    ]
