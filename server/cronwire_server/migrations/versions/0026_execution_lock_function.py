"""A finish locks its executions by primary key, whatever the planner estimates (PostgreSQL).

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-04

A finish locked the rows of its batch with a join that also required them RUNNING and leased to
its worker. With that condition the partial index of running executions could serve the join,
and where the statistics of `executions` said few were running (none taken yet, or taken at a
quiet time) while thousands were (a burst; remote workers' long runs), the planner read every
running execution for each batch: 2,000 rows to finish 16. `cronwire_lock_executions` locks the
given rows, in primary-key order, by primary key alone: with no condition on their state no
partial index applies, and with sequential and bitmap scans off inside it the primary key is the
one way left. The caller checks the worker and the state of what it locked.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0026"
down_revision: str | Sequence[str] | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = """
CREATE FUNCTION cronwire_lock_executions(namespaces text[], ids text[])
RETURNS TABLE (namespace varchar, id varchar, worker varchar, state varchar)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET enable_bitmapscan = off
-- Tiny inputs the planner cannot size: compiling them (JIT) would cost more than running them.
SET jit = off
AS $$
BEGIN
    RETURN QUERY
    SELECT e.namespace, e.id, e.worker, e.state
    FROM executions AS e
    JOIN unnest(namespaces, ids) AS k(namespace, id) ON e.namespace = k.namespace AND e.id = k.id
    ORDER BY e.namespace, e.id
    FOR UPDATE OF e;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION cronwire_lock_executions(text[], text[])")
