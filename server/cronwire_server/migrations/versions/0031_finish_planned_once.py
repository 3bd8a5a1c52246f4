"""A finish's rows ended by the address its lock found, so the finish is planned once (PostgreSQL).

Revision ID: 0031
Revises: 0030
Create Date: 2026-12-05

A plain finish (one statement ending the outcomes of a loop turn, `storage.sql_queue`) updated
its rows by primary key, joined to what `cronwire_lock_executions` locked. That join is an index
choice: a plan made while `executions` was nearly empty may read every row of the namespace for
each run (0027), so the finishes' sessions planned every finish at every call, which cost
PostgreSQL about a tenth of its time per run at 1,000 runs a second.

`cronwire_end_executions(outcomes, finisher, counted)` now locks the rows (by primary key, planned at
every call, as before) and, in a statement of its own, updates them by the address the lock
returned: a TID scan, no index to choose, so its plan and the finish's are made once. The update
must be a statement of its own: a lease renewal that commits while the lock waits gives the row a
newer version, which the lock returns and which only a later statement's snapshot can see. Where
the finish adds its runs to the counters itself (0029), the function tells the update's trigger,
which fires inside it, to record nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0031"
down_revision: str | Sequence[str] | None = "0030"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LOCK = "cronwire_lock_executions(text[], text[])"

# 0026's function, its rows' addresses returned too (as `address`, from `e.ctid`), with 0027's
# planning at every call.
_LOCK_FUNCTION = """
CREATE FUNCTION cronwire_lock_executions(namespaces text[], ids text[])
RETURNS TABLE (namespace varchar, id varchar, worker varchar, state varchar, address tid)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
SET enable_bitmapscan = off
-- Tiny inputs the planner cannot size: compiling them (JIT) would cost more than running them.
SET jit = off
-- An index choice: planned for the table as it is at each call (0027).
SET plan_cache_mode = force_custom_plan
AS $$
BEGIN
    RETURN QUERY
    SELECT e.namespace, e.id, e.worker, e.state, e.ctid
    FROM executions AS e
    JOIN unnest(namespaces, ids) AS k(namespace, id) ON e.namespace = k.namespace AND e.id = k.id
    ORDER BY e.namespace, e.id
    FOR UPDATE OF e;
END $$
"""

_END_FUNCTION = """
CREATE FUNCTION cronwire_end_executions(outcomes jsonb, finisher text, counted boolean)
RETURNS SETOF executions
LANGUAGE plpgsql VOLATILE
-- Rows are read by address alone: no sequential scan, whatever the table's size says.
SET enable_seqscan = off
SET enable_bitmapscan = off
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    addresses tid[];
BEGIN
    -- Locked by primary key, in its order; only those the finisher still runs are ended.
    SELECT coalesce(array_agg(h.address), '{}') INTO addresses
    FROM cronwire_lock_executions(
        ARRAY(SELECT o->>'namespace' FROM jsonb_array_elements(outcomes) AS o),
        ARRAY(SELECT o->>'id' FROM jsonb_array_elements(outcomes) AS o)) AS h
    WHERE h.worker = finisher AND h.state = 'running';
    IF counted THEN
        -- The caller adds these runs to the counters itself: the update's trigger (it fires
        -- after the update) records nothing.
        PERFORM set_config('cronwire.counted', 'on', true);
    END IF;
    RETURN QUERY
    UPDATE executions AS e
    SET state = o.state, start_time = coalesce(o.start_time, e.start_time),
        -- It ended that long before the transaction's now() (an outcome waits to be written).
        end_time = greatest(coalesce(o.start_time, e.start_time), now() - make_interval(secs => o.waited)),
        exit_code = o.exit_code, http_status = o.http_status,
        output = o.output, output_truncated = o.output_truncated, result = NULLIF(o.result, 'null'),
        -- A cancellation's reason was recorded when it was requested: keep it.
        error = CASE WHEN e.cancel_requested AND o.state = 'cancelled' THEN e.error ELSE o.error END,
        lease_expires_at = NULL
    FROM unnest(addresses) AS h(address),
         jsonb_to_recordset(outcomes) AS o(
            namespace text, id text, state text, exit_code integer, http_status integer,
            output text, output_truncated boolean, result jsonb, error text,
            start_time timestamptz, waited float8)
    WHERE e.ctid = h.address AND o.namespace = e.namespace AND o.id = e.id
    RETURNING e.*;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP FUNCTION {_LOCK}")
    op.execute(_LOCK_FUNCTION)
    op.execute(_END_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION cronwire_end_executions(jsonb, text, boolean)")
    op.execute(f"DROP FUNCTION {_LOCK}")
    op.execute(_LOCK_FUNCTION.replace(", address tid", "").replace(", e.ctid", ""))
