"""Execution counters folded by one upsert per transaction (PostgreSQL).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03

The fold of 0011 expanded a transaction's recorded changes three times (once to insert missing
counter rows, once to lock the rows, once to update them) and sent three statements; it cost
about half of PostgreSQL's time per noop execution. Now the changes are expanded once, and one
`INSERT ... ON CONFLICT DO UPDATE` adds them to the counter rows (making any that is missing),
taking the rows' locks in primary-key order as it goes, still the last locks of the transaction.

The last run is the started execution with the latest (start time, id): the transaction's own
latest started one when it is that late or later than the stored one (the same execution
included, whose state it then brings), else the stored one.

SQLite keeps its row triggers; nothing changes there.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Durations kept per job or schedule for the median: the latest this many (as in 0011).
WINDOW = 100
FAILED = "('failed', 'timed_out', 'lost')"

_NEWER = """(excluded.last_run_time IS NOT NULL AND (c.last_run_time IS NULL
    OR (excluded.last_run_time, excluded.last_run_id) >= (c.last_run_time, c.last_run_id)))"""

_FOLD = f"""
CREATE OR REPLACE FUNCTION cronwire_counters_fold() RETURNS trigger LANGUAGE plpgsql
-- Tiny inputs the planner cannot size: compiling them (JIT) would cost more than running them.
SET jit = off AS $$
BEGIN
    -- The first fold of a transaction takes every change it recorded; the others find none.
    IF NOT EXISTS (SELECT 1 FROM execution_counter_changes) THEN
        RETURN NULL;
    END IF;
    WITH x AS MATERIALIZED (
        SELECT c.id AS seq, e.o, e.v->>'namespace' AS namespace, e.v->>'job_id' AS job_id,
               e.v->>'schedule_id' AS schedule_id, e.v->>'id' AS id,
               (e.v->>'inserted')::boolean AS inserted, e.v->>'old_state' AS old_state,
               e.v->>'state' AS state, (e.v->>'start_time')::timestamptz AS start_time,
               (e.v->>'duration')::float8 AS duration
        FROM execution_counter_changes c, jsonb_array_elements(c.changes) WITH ORDINALITY AS e(v, o)
    ),
    owned AS MATERIALIZED (
        SELECT namespace, 'job' AS kind, job_id AS owner_id, seq, o, id, inserted, old_state, state,
               start_time, duration
        FROM x
        UNION ALL
        SELECT namespace, 'schedule', schedule_id, seq, o, id, inserted, old_state, state,
               start_time, duration
        FROM x WHERE schedule_id <> ''
    ),
    sums AS (
        SELECT namespace, kind, owner_id,
               count(*) FILTER (WHERE inserted) AS total,
               sum((state = 'succeeded')::int - (coalesce(old_state, '') = 'succeeded')::int)
                   AS succeeded,
               sum((state IN {FAILED})::int - (coalesce(old_state, '') IN {FAILED})::int) AS failed,
               coalesce(array_agg(duration ORDER BY seq, o) FILTER (WHERE duration IS NOT NULL),
                        '{{}}') AS durations
        FROM owned GROUP BY namespace, kind, owner_id
    ),
    latest AS (  -- each execution's state at the end of the transaction
        SELECT DISTINCT ON (namespace, kind, owner_id, id)
               namespace, kind, owner_id, id, start_time, state
        FROM owned ORDER BY namespace, kind, owner_id, id, seq DESC, o DESC
    ),
    last_run AS (  -- per owner, the latest started of them
        SELECT DISTINCT ON (namespace, kind, owner_id) namespace, kind, owner_id, id, start_time, state
        FROM latest WHERE start_time IS NOT NULL
        ORDER BY namespace, kind, owner_id, start_time DESC, id DESC
    )
    INSERT INTO execution_counters AS c
        (namespace, kind, owner_id, total, succeeded, failed, durations,
         last_run_time, last_run_id, last_run_state)
    SELECT s.namespace, s.kind, s.owner_id, s.total, s.succeeded, s.failed,
           s.durations[greatest(cardinality(s.durations) - {WINDOW - 1}, 1):],
           l.start_time, l.id, l.state
    FROM sums s LEFT JOIN last_run l
        ON l.namespace = s.namespace AND l.kind = s.kind AND l.owner_id = s.owner_id
    ORDER BY s.namespace, s.kind, s.owner_id  -- the locks, in primary-key order
    ON CONFLICT (namespace, kind, owner_id) DO UPDATE SET
        total = c.total + excluded.total,
        succeeded = c.succeeded + excluded.succeeded,
        failed = c.failed + excluded.failed,
        durations = (c.durations || excluded.durations)[
            greatest(cardinality(c.durations) + cardinality(excluded.durations) - {WINDOW - 1}, 1):],
        last_run_time = CASE WHEN {_NEWER} THEN excluded.last_run_time ELSE c.last_run_time END,
        last_run_id = CASE WHEN {_NEWER} THEN excluded.last_run_id ELSE c.last_run_id END,
        last_run_state = CASE WHEN {_NEWER} THEN excluded.last_run_state ELSE c.last_run_state END;
    DELETE FROM execution_counter_changes;
    RETURN NULL;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FOLD)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_previous_fold())


def _previous_fold() -> str:
    """0011's fold, as that migration created it."""
    path = Path(__file__).with_name("0011_execution_counters.py")
    spec = importlib.util.spec_from_file_location("cronwire_migration_0011", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module._FOLD).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
