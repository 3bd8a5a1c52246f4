"""The runs' own statements add to the execution counters (PostgreSQL).

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-05

Until now every change to `executions` reached the counters the same way: a statement trigger
wrote the changed rows as JSON into `execution_counter_changes`, and a deferred trigger read them
back, added them to the counter rows and deleted them at commit. For a noop run that machinery
(two JSON documents built and parsed, a row inserted and deleted, a deferred trigger fired, per
transaction) cost PostgreSQL more than the counter rows' updates themselves.

The rules of the fold now live in one function, `cronwire_counters_add(changes)`, taking the
changes as an array of `cronwire_counter_change` in their order. The fold calls it with what the
transaction recorded, as before. The statements of every run (a dispatch's ticks, a plain claim,
a plain finish) call `cronwire_counters_count(changes)` with their own rows instead: it adds them
at once and tells the statement's own trigger on `executions`, which fires after it, to record
nothing (a transaction setting, consumed by that trigger). Such a statement is its transaction's
last change, so its counter rows are still the transaction's last locks, taken in primary-key
order.

SQLite keeps its row triggers; nothing changes there.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0029"
down_revision: str | Sequence[str] | None = "0028"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _migration(name: str) -> ModuleType:
    path = next(Path(__file__).parent.glob(f"{name}_*.py"))
    spec = importlib.util.spec_from_file_location(f"cronwire_migration_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The fold's rules as 0016 wrote them: the durations window, the failed states, which last run is newer.
_0016 = _migration("0016")
WINDOW, FAILED, _NEWER = _0016.WINDOW, _0016.FAILED, _0016._NEWER
# Set by cronwire_counters_count for the trigger of the statement that called it.
COUNTED = "cronwire.counted"

_TYPE = """
CREATE TYPE cronwire_counter_change AS (
    namespace text, job_id text, schedule_id text, id text, inserted boolean, old_state text,
    state text, start_time timestamptz, duration float8
)
"""

# 0016's fold, its changes taken from the array (in its order) instead of the changes table.
_ADD = f"""
CREATE FUNCTION cronwire_counters_add(changes cronwire_counter_change[]) RETURNS void
LANGUAGE plpgsql
-- Tiny inputs the planner cannot size: compiling them (JIT) would cost more than running them.
SET jit = off
-- No table is looked up but the counters, by their primary key: one plan fits every call.
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    WITH x AS MATERIALIZED (
        SELECT * FROM unnest(changes) WITH ORDINALITY
            AS x(namespace, job_id, schedule_id, id, inserted, old_state, state, start_time, duration, o)
    ),
    owned AS MATERIALIZED (
        SELECT namespace, 'job' AS kind, job_id AS owner_id, o, id, inserted, old_state, state,
               start_time, duration
        FROM x
        UNION ALL
        SELECT namespace, 'schedule', schedule_id, o, id, inserted, old_state, state,
               start_time, duration
        FROM x WHERE schedule_id <> ''
    ),
    sums AS (
        SELECT namespace, kind, owner_id,
               count(*) FILTER (WHERE inserted) AS total,
               sum((state = 'succeeded')::int - (coalesce(old_state, '') = 'succeeded')::int)
                   AS succeeded,
               sum((state IN {FAILED})::int - (coalesce(old_state, '') IN {FAILED})::int) AS failed,
               coalesce(array_agg(duration ORDER BY o) FILTER (WHERE duration IS NOT NULL),
                        '{{}}') AS durations
        FROM owned GROUP BY namespace, kind, owner_id
    ),
    latest AS (  -- each execution's state after these changes
        SELECT DISTINCT ON (namespace, kind, owner_id, id)
               namespace, kind, owner_id, id, start_time, state
        FROM owned ORDER BY namespace, kind, owner_id, id, o DESC
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
END $$
"""

_COUNT = f"""
CREATE FUNCTION cronwire_counters_count(changes cronwire_counter_change[]) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    -- The calling statement's trigger on executions (it fires after the statement) records
    -- nothing: these are its rows.
    PERFORM set_config('{COUNTED}', 'on', true);
    IF cardinality(changes) > 0 THEN
        PERFORM cronwire_counters_add(changes);
    END IF;
    RETURN true;
END $$
"""

_FOLD = """
CREATE OR REPLACE FUNCTION cronwire_counters_fold() RETURNS trigger LANGUAGE plpgsql
-- Tiny inputs the planner cannot size: compiling them (JIT) would cost more than running them.
SET jit = off AS $$
BEGIN
    -- The first fold of a transaction takes every change it recorded; the others find none.
    IF NOT EXISTS (SELECT 1 FROM execution_counter_changes) THEN
        RETURN NULL;
    END IF;
    PERFORM cronwire_counters_add(ARRAY(
        SELECT ROW(e.v->>'namespace', e.v->>'job_id', e.v->>'schedule_id', e.v->>'id',
                   (e.v->>'inserted')::boolean, e.v->>'old_state', e.v->>'state',
                   (e.v->>'start_time')::timestamptz, (e.v->>'duration')::float8
               )::cronwire_counter_change
        FROM execution_counter_changes c, jsonb_array_elements(c.changes) WITH ORDINALITY AS e(v, o)
        ORDER BY c.id, e.o));
    DELETE FROM execution_counter_changes;
    RETURN NULL;
END $$
"""

# The statement that counted its rows itself has its trigger record nothing, once.
_SKIP_COUNTED = f"""
    IF current_setting('{COUNTED}', true) = 'on' THEN
        PERFORM set_config('{COUNTED}', 'off', true);
        RETURN NULL;
    END IF;"""


def _recorders(skip: str) -> list[str]:
    """0011's two recording trigger functions, each starting with `skip`."""
    m0011 = _migration("0011")
    replaced = (
        str(body).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
        for body in (m0011._RECORD_INSERTS, m0011._RECORD_UPDATES)
    )
    return [body.replace("BEGIN", "BEGIN" + skip, 1) for body in replaced]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for statement in (_TYPE, _ADD, _COUNT, _FOLD, *_recorders(_SKIP_COUNTED)):
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for statement in (_0016._FOLD, *_recorders("")):
        op.execute(statement)
    op.execute("DROP FUNCTION cronwire_counters_count(cronwire_counter_change[])")
    op.execute("DROP FUNCTION cronwire_counters_add(cronwire_counter_change[])")
    op.execute("DROP TYPE cronwire_counter_change")
