"""Events numbered by one function call (PostgreSQL).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03

`cronwire_number_events(batch)` takes the sequencer's lock, numbers up to `batch` pending events
in insertion order and NOTIFYs the replicas: one statement for the sequencer to send (prepared
like any other), one round trip. Being VOLATILE, each statement in it takes a fresh snapshot, so
the numbering sees every numbering committed before it got the lock.

The pending events are found by an index scan (bitmap scans off inside the function): a numbered
event leaves a dead entry in the index of pending events until vacuum, and an index scan marks
such entries dead as it passes them (once no transaction can see the old row), so that passes
stop visiting them; a bitmap scan never does, and would visit every event numbered since the
table's last vacuum, on every pass.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The sequencer's advisory lock: any constant, the same in every replica (and as before 0017).
SEQUENCER_LOCK = 0x63726F6E77697265

_FUNCTION = f"""
CREATE FUNCTION cronwire_number_events(batch integer) RETURNS integer LANGUAGE plpgsql VOLATILE
-- Tiny inputs the planner cannot size: compiling them (JIT) would cost more than running them.
SET jit = off
SET enable_bitmapscan = off
AS $$
DECLARE
    numbered integer;
BEGIN
    PERFORM pg_advisory_xact_lock({SEQUENCER_LOCK});
    WITH base AS (SELECT coalesce(max(sequence), 0) AS last FROM events),
    pending AS (
        SELECT id, row_number() OVER (ORDER BY id) AS n
        FROM (SELECT id FROM events WHERE sequence IS NULL ORDER BY id LIMIT batch) AS first
    ),
    updated AS (
        UPDATE events AS e SET sequence = base.last + pending.n
        FROM pending, base WHERE e.id = pending.id
        RETURNING e.id
    )
    SELECT count(*) INTO numbered FROM updated;
    IF numbered > 0 THEN
        PERFORM pg_notify('cronwire_events', '');
    END IF;
    RETURN numbered;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION cronwire_number_events(integer)")
