"""The runs' events numbered as written only when no other numbering is under way (PostgreSQL).

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-05

With 0028, the statements of every run waited for the sequencer's lock and held it until they
committed, their counters' fold and their commit's flush included: with two replicas, each one's
claims, finishes and dispatches took turns with the other's, and a 3,000-run burst took 13 %
longer. Now `cronwire_take_sequences()` only tries the lock: taken, it numbers as before; held by
another numbering, it returns NULL, the statement's events are written unnumbered, and the
sequencer (woken by the trigger of 0028) numbers them. The order stays what readers rely on: a
numbering still numbers the committed events left unnumbered first.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0029"
down_revision: str | Sequence[str] | None = "0028"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The sequencer's advisory lock (migration 0017).
SEQUENCER_LOCK = 0x63726F6E77697265


def _function(take_lock: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION cronwire_take_sequences() RETURNS bigint LANGUAGE plpgsql VOLATILE
-- Tiny inputs the planner cannot size: compiling them (JIT) would cost more than running them.
SET jit = off
AS $$
DECLARE
    last bigint;
BEGIN
{take_lock}
    -- Under the sequencer's lock (held until this transaction commits), the events committed
    -- before and not yet numbered come first: a run's QUEUED event, written by another
    -- statement, before the STARTED of the claim that saw it.
    PERFORM cronwire_number_events({2**31 - 1});
    SELECT coalesce(max(sequence), 0) INTO last FROM events;
    PERFORM pg_notify('cronwire_events', '');
    RETURN last;
END $$
"""


_TRY = f"""    IF NOT pg_try_advisory_xact_lock({SEQUENCER_LOCK}) THEN
        RETURN NULL;  -- another numbering is under way: the sequencer numbers these
    END IF;"""


def _notify(condition: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION cronwire_notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{condition}
        PERFORM pg_notify('cronwire_events_new', '');
    {"END IF;" if condition else ""}
    RETURN NULL;
END $$
"""


# Once per statement, and only when some event waits for the sequencer (a row trigger, as 0028
# made it, was a call per event of the other statements, and of every run's when left unnumbered).
_PENDING = "    IF EXISTS (SELECT 1 FROM events WHERE sequence IS NULL) THEN"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_function(_TRY))
    op.execute(_notify(_PENDING))
    op.execute("DROP TRIGGER events_notify ON events")
    op.execute(
        "CREATE TRIGGER events_notify AFTER INSERT ON events "
        "FOR EACH STATEMENT EXECUTE FUNCTION cronwire_notify_events()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_function(""))  # 0028's: the numbering below waits for the lock
    op.execute(_notify(""))  # 0004's
    op.execute("DROP TRIGGER events_notify ON events")
    op.execute(
        "CREATE TRIGGER events_notify AFTER INSERT ON events FOR EACH ROW "
        "WHEN (NEW.sequence IS NULL) EXECUTE FUNCTION cronwire_notify_events()"
    )
