"""Execution statistics as counters kept by the database, so a read is one statement.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03

Every job and schedule has a row of `execution_counters` (made with it; for existing ones and
for ids only executions still name, backfilled here from the executions). Triggers on
`executions` keep the rows exact whatever statement changes an execution, with no statement
of the server's own:

- total: executions inserted; succeeded / failed (FAILED, TIMED_OUT, LOST): executions in
  those states now, moved as executions change state;
- the last run: the started execution with the latest (start time, id), and its state;
- durations: the end minus start times of the latest `WINDOW` executions that ended after
  starting, oldest first (the median is computed on read).

Deleting executions (retention) or the job or schedule leaves the counters: they are lifetime
counts of the id in its namespace.

SQLite (one process, embedded): row triggers update the counters as each execution changes.

PostgreSQL: a statement trigger (with its transition tables) records what a statement changed,
as one row of `execution_counter_changes`; a deferred constraint trigger folds those rows into
the counters when the transaction commits, locking the counter rows in primary-key order as
its last act. Updating them in the changing statement itself would take their locks in the
middle of transactions that go on to lock executions (the dispatcher's cancel, a finish's
retries and dependents): two such transactions could deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, DOUBLE_PRECISION, JSONB

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Durations kept per job or schedule for the median: the latest this many.
WINDOW = 100
FAILED = "('failed', 'timed_out', 'lost')"

Ident = sa.String().with_variant(sa.String(collation="C"), "postgresql")
UtcDateTime = sa.DateTime(timezone=True)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "execution_counters",
        sa.Column("namespace", Ident, nullable=False),
        sa.Column("kind", sa.String(), nullable=False),  # 'job' or 'schedule'
        sa.Column("owner_id", Ident, nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("succeeded", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("failed", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("last_run_time", UtcDateTime, nullable=True),
        sa.Column("last_run_id", Ident, nullable=True),
        sa.Column("last_run_state", sa.String(), nullable=True),
        sa.Column(
            "durations",
            sa.JSON().with_variant(ARRAY(DOUBLE_PRECISION()), "postgresql"),
            nullable=False,
            server_default=sa.text("'{}'") if postgres else sa.text("'[]'"),
        ),
        sa.PrimaryKeyConstraint("namespace", "kind", "owner_id", name="pk_execution_counters"),
    )
    # What statements changed, until their transaction commits (PostgreSQL; empty on SQLite).
    op.create_table(
        "execution_counter_changes",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("changes", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_execution_counter_changes"),
        # Rows never outlive their transaction: nothing to recover after a crash.
        prefixes=["UNLOGGED"] if postgres else [],
    )
    if postgres:
        for statement in _POSTGRES:
            op.execute(statement)
    else:
        for statement in _SQLITE:
            op.execute(statement)
    _backfill(postgres)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("DROP TRIGGER cronwire_counters_insert ON executions")
        op.execute("DROP TRIGGER cronwire_counters_update ON executions")
        op.execute("DROP TRIGGER cronwire_counters_job ON jobs")
        op.execute("DROP TRIGGER cronwire_counters_schedule ON schedules")
        op.execute("DROP TRIGGER cronwire_counters_fold ON execution_counter_changes")
    else:
        for name in ("insert", "update", "job", "schedule"):
            op.execute(f"DROP TRIGGER cronwire_counters_{name}")
    op.drop_table("execution_counter_changes")
    op.drop_table("execution_counters")
    if postgres:
        for function in ("record_inserts", "record_updates", "fold", "create"):
            op.execute(f"DROP FUNCTION cronwire_counters_{function}()")


# ---------------------------------------------------------------------------
# PostgreSQL

# One JSON object per changed execution, in the statement's order of end time.
_CHANGE = """
jsonb_agg(jsonb_build_object(
    'namespace', n.namespace, 'job_id', n.job_id, 'schedule_id', n.schedule_id, 'id', n.id,
    'inserted', {inserted}, 'old_state', {old_state}, 'state', n.state, 'start_time', n.start_time,
    'duration', CASE WHEN {ended} AND n.start_time IS NOT NULL
                     THEN extract(epoch FROM n.end_time - n.start_time) END
) ORDER BY n.end_time NULLS FIRST, n.id)
"""

_RECORD_INSERTS = f"""
CREATE FUNCTION cronwire_counters_record_inserts() RETURNS trigger LANGUAGE plpgsql
-- Tiny inputs the planner cannot size: compiling them (JIT) would cost more than running them.
SET jit = off AS $$
BEGIN
    INSERT INTO execution_counter_changes (changes)
    SELECT {_CHANGE.format(inserted="true", old_state="NULL", ended="n.end_time IS NOT NULL")}
    FROM new_rows n
    HAVING count(*) > 0;
    RETURN NULL;
END $$
"""

_ENDED = "o.end_time IS NULL AND n.end_time IS NOT NULL"
_RECORD_UPDATES = f"""
CREATE FUNCTION cronwire_counters_record_updates() RETURNS trigger LANGUAGE plpgsql
-- Tiny inputs the planner cannot size: compiling them (JIT) would cost more than running them.
SET jit = off AS $$
BEGIN
    INSERT INTO execution_counter_changes (changes)
    SELECT {_CHANGE.format(inserted="false", old_state="o.state", ended=_ENDED)}
    FROM new_rows n JOIN old_rows o ON o.namespace = n.namespace AND o.id = n.id
    WHERE n.state IS DISTINCT FROM o.state
       OR n.start_time IS DISTINCT FROM o.start_time
       OR (o.end_time IS NULL AND n.end_time IS NOT NULL)
    HAVING count(*) > 0;
    RETURN NULL;
END $$
"""

# Every change this transaction recorded, once per job and once per schedule it belongs to.
_OWNED = """
WITH x AS (
    SELECT c.id AS seq, e.o, e.v->>'namespace' AS namespace, e.v->>'job_id' AS job_id,
           e.v->>'schedule_id' AS schedule_id, e.v->>'id' AS id, (e.v->>'inserted')::boolean AS inserted,
           e.v->>'old_state' AS old_state, e.v->>'state' AS state,
           (e.v->>'start_time')::timestamptz AS start_time, (e.v->>'duration')::float8 AS duration
    FROM execution_counter_changes c, jsonb_array_elements(c.changes) WITH ORDINALITY AS e(v, o)
), owned AS (
    SELECT namespace, 'job' AS kind, job_id AS owner_id, seq, o, id, inserted, old_state, state,
           start_time, duration
    FROM x
    UNION ALL
    SELECT namespace, 'schedule', schedule_id, seq, o, id, inserted, old_state, state,
           start_time, duration
    FROM x WHERE schedule_id <> ''
)
"""

_FOLD = f"""
CREATE FUNCTION cronwire_counters_fold() RETURNS trigger LANGUAGE plpgsql
-- Tiny inputs the planner cannot size: compiling them (JIT) would cost more than running them.
SET jit = off AS $$
BEGIN
    -- The first fold of a transaction takes every change it recorded; the others find none.
    IF NOT EXISTS (SELECT 1 FROM execution_counter_changes) THEN
        RETURN NULL;
    END IF;
    -- Rows for ids no job or schedule row made one for (they normally exist already).
    {_OWNED}
    INSERT INTO execution_counters (namespace, kind, owner_id)
    SELECT DISTINCT namespace, kind, owner_id FROM owned ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING;
    -- Lock them in primary-key order, the last locks this transaction takes.
    PERFORM 1 FROM execution_counters c
    WHERE (c.namespace, c.kind, c.owner_id) IN ({_OWNED} SELECT namespace, kind, owner_id FROM owned)
    ORDER BY c.namespace, c.kind, c.owner_id
    FOR UPDATE;
    {_OWNED},
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
    )
    UPDATE execution_counters c SET
        total = c.total + s.total,
        succeeded = c.succeeded + s.succeeded,
        failed = c.failed + s.failed,
        durations = (c.durations || s.durations)[
            greatest(cardinality(c.durations) + cardinality(s.durations) - {WINDOW - 1}, 1):],
        (last_run_time, last_run_id, last_run_state) = (
            SELECT t, i, st FROM (
                SELECT l.start_time AS t, l.id AS i, l.state AS st
                FROM latest l
                WHERE l.namespace = c.namespace AND l.kind = c.kind AND l.owner_id = c.owner_id
                  AND l.start_time IS NOT NULL
                UNION ALL
                SELECT c.last_run_time, c.last_run_id, c.last_run_state
                WHERE c.last_run_time IS NOT NULL AND NOT EXISTS (
                    SELECT 1 FROM latest l
                    WHERE l.namespace = c.namespace AND l.kind = c.kind AND l.owner_id = c.owner_id
                      AND l.id = c.last_run_id AND l.start_time IS NOT NULL)
            ) candidates
            ORDER BY t DESC, i DESC LIMIT 1)
    FROM sums s
    WHERE c.namespace = s.namespace AND c.kind = s.kind AND c.owner_id = s.owner_id;
    DELETE FROM execution_counter_changes;
    RETURN NULL;
END $$
"""

_CREATE = """
CREATE FUNCTION cronwire_counters_create() RETURNS trigger LANGUAGE plpgsql
-- Tiny inputs the planner cannot size: compiling them (JIT) would cost more than running them.
SET jit = off AS $$
BEGIN
    INSERT INTO execution_counters (namespace, kind, owner_id)
    VALUES (NEW.namespace, TG_ARGV[0], NEW.id)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$
"""

_POSTGRES = [
    _RECORD_INSERTS,
    _RECORD_UPDATES,
    _FOLD,
    _CREATE,
    """CREATE TRIGGER cronwire_counters_insert AFTER INSERT ON executions
       REFERENCING NEW TABLE AS new_rows
       FOR EACH STATEMENT EXECUTE FUNCTION cronwire_counters_record_inserts()""",
    """CREATE TRIGGER cronwire_counters_update AFTER UPDATE ON executions
       REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
       FOR EACH STATEMENT EXECUTE FUNCTION cronwire_counters_record_updates()""",
    """CREATE CONSTRAINT TRIGGER cronwire_counters_fold AFTER INSERT ON execution_counter_changes
       DEFERRABLE INITIALLY DEFERRED
       FOR EACH ROW EXECUTE FUNCTION cronwire_counters_fold()""",
    """CREATE TRIGGER cronwire_counters_job AFTER INSERT ON jobs
       FOR EACH ROW EXECUTE FUNCTION cronwire_counters_create('job')""",
    """CREATE TRIGGER cronwire_counters_schedule AFTER INSERT ON schedules
       FOR EACH ROW EXECUTE FUNCTION cronwire_counters_create('schedule')""",
]

# ---------------------------------------------------------------------------
# SQLite: times are fixed-width text, 'YYYY-MM-DD HH:MM:SS.ffffff'; compared as text.

# Seconds from start to end, to the microsecond.
_DURATION = """(
    round((julianday(substr(NEW.end_time, 1, 19)) - julianday(substr(NEW.start_time, 1, 19))) * 86400)
    + (CAST(substr(NEW.end_time, 20) AS REAL) - CAST(substr(NEW.start_time, 20) AS REAL))
)"""

_NEWER = """(NEW.start_time IS NOT NULL AND (last_run_time IS NULL OR NEW.start_time > last_run_time
    OR (NEW.start_time = last_run_time AND NEW.id >= last_run_id)))"""


def _sqlite_update(total: str, old_state: str, ended: str) -> str:
    return f"""
    INSERT OR IGNORE INTO execution_counters (namespace, kind, owner_id)
    VALUES (NEW.namespace, 'job', NEW.job_id);
    INSERT OR IGNORE INTO execution_counters (namespace, kind, owner_id)
    SELECT NEW.namespace, 'schedule', NEW.schedule_id WHERE NEW.schedule_id <> '';
    UPDATE execution_counters SET
        total = total + {total},
        succeeded = succeeded + (NEW.state = 'succeeded') - (coalesce({old_state}, '') = 'succeeded'),
        failed = failed + (NEW.state IN {FAILED}) - (coalesce({old_state}, '') IN {FAILED}),
        last_run_state = CASE WHEN {_NEWER} THEN NEW.state
            WHEN NEW.start_time IS NOT NULL AND NEW.id = last_run_id THEN NEW.state
            ELSE last_run_state END,
        last_run_time = CASE WHEN {_NEWER} THEN NEW.start_time ELSE last_run_time END,
        last_run_id = CASE WHEN {_NEWER} THEN NEW.id ELSE last_run_id END,
        durations = CASE WHEN {ended} AND NEW.start_time IS NOT NULL THEN json_insert(
            CASE WHEN json_array_length(durations) >= {WINDOW} THEN json_remove(durations, '$[0]')
                 ELSE durations END,
            '$[#]', {_DURATION}) ELSE durations END
    WHERE namespace = NEW.namespace
      AND ((kind = 'job' AND owner_id = NEW.job_id)
           OR (kind = 'schedule' AND owner_id = NEW.schedule_id AND NEW.schedule_id <> ''));
    """


_SQLITE = [
    f"""CREATE TRIGGER cronwire_counters_insert AFTER INSERT ON executions BEGIN
    {_sqlite_update("1", "NULL", "NEW.end_time IS NOT NULL")}
    END""",
    f"""CREATE TRIGGER cronwire_counters_update AFTER UPDATE OF state, start_time, end_time ON executions
    WHEN NEW.state IS NOT OLD.state OR NEW.start_time IS NOT OLD.start_time
         OR (OLD.end_time IS NULL AND NEW.end_time IS NOT NULL)
    BEGIN
    {_sqlite_update("0", "OLD.state", "OLD.end_time IS NULL AND NEW.end_time IS NOT NULL")}
    END""",
    """CREATE TRIGGER cronwire_counters_job AFTER INSERT ON jobs BEGIN
    INSERT OR IGNORE INTO execution_counters (namespace, kind, owner_id)
    VALUES (NEW.namespace, 'job', NEW.id);
    END""",
    """CREATE TRIGGER cronwire_counters_schedule AFTER INSERT ON schedules BEGIN
    INSERT OR IGNORE INTO execution_counters (namespace, kind, owner_id)
    VALUES (NEW.namespace, 'schedule', NEW.id);
    END""",
]

# ---------------------------------------------------------------------------
# The backfill: the same figures from the executions there are.

_BACKFILL_OWNED = """
owned AS (
    SELECT namespace, 'job' AS kind, job_id AS owner_id, id, state, start_time, end_time FROM executions
    UNION ALL
    SELECT namespace, 'schedule', schedule_id, id, state, start_time, end_time
    FROM executions WHERE schedule_id <> ''
),
owners AS (
    SELECT namespace, 'job' AS kind, id AS owner_id FROM jobs
    UNION SELECT namespace, 'schedule', id FROM schedules
    UNION SELECT DISTINCT namespace, kind, owner_id FROM owned
),
sums AS (
    SELECT namespace, kind, owner_id, count(*) AS total,
           sum(CASE WHEN state = 'succeeded' THEN 1 ELSE 0 END) AS succeeded,
           sum(CASE WHEN state IN {failed} THEN 1 ELSE 0 END) AS failed
    FROM owned GROUP BY namespace, kind, owner_id
),
ranked_runs AS (
    SELECT namespace, kind, owner_id, id, state, start_time,
           row_number() OVER (PARTITION BY namespace, kind, owner_id
                              ORDER BY start_time DESC, id DESC) AS r
    FROM owned WHERE start_time IS NOT NULL
),
ranked_durations AS (
    SELECT namespace, kind, owner_id, end_time, id, {duration} AS d,
           row_number() OVER (PARTITION BY namespace, kind, owner_id
                              ORDER BY end_time DESC, id DESC) AS r
    FROM owned WHERE start_time IS NOT NULL AND end_time IS NOT NULL
)
"""


def _backfill(postgres: bool) -> None:
    if postgres:
        duration = "extract(epoch FROM end_time - start_time)"
        durations = (
            "(SELECT coalesce(array_agg(d.d ORDER BY d.end_time, d.id), '{}') FROM ranked_durations d"
            f" WHERE {_same('d')} AND d.r <= {WINDOW})"
        )
    else:
        duration = _DURATION.replace("NEW.", "")
        durations = (
            "(SELECT json_group_array(d) FROM (SELECT d.d FROM ranked_durations d"
            f" WHERE {_same('d')} AND d.r <= {WINDOW} ORDER BY d.end_time, d.id))"
        )
    cte = _BACKFILL_OWNED.format(failed=FAILED, duration=duration)
    op.execute(
        f"""
        WITH {cte}
        INSERT INTO execution_counters (namespace, kind, owner_id, total, succeeded, failed,
            last_run_time, last_run_id, last_run_state, durations)
        SELECT o.namespace, o.kind, o.owner_id,
               coalesce(s.total, 0), coalesce(s.succeeded, 0), coalesce(s.failed, 0),
               l.start_time, l.id, l.state, {durations}
        FROM owners o
        LEFT JOIN sums s ON {_same("s")}
        LEFT JOIN ranked_runs l ON {_same("l")} AND l.r = 1
        """
    )


def _same(alias: str) -> str:
    return f"{alias}.namespace = o.namespace AND {alias}.kind = o.kind AND {alias}.owner_id = o.owner_id"
