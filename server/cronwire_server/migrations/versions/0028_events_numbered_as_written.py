"""The runs' events numbered as they are written (PostgreSQL).

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-05

Until now every event was inserted without a sequence and numbered by the sequencer's UPDATE once
committed: a second copy of each row (about 1.2 KiB with its execution snapshot), its index
entries, and a dead row for vacuum, a third of the write-ahead log of a noop run.

The statements of every run (a dispatch's ticks, a claim, a finish; each its transaction's last
change) now number their events as they insert them: `cronwire_take_sequences()` takes the
sequencer's lock, held until their commit, numbers the events committed before that are still
unnumbered (so that a run's QUEUED event, written by another statement, precedes the STARTED of
the claim that saw it), and returns the last sequence given, read with a snapshot taken once the
lock is held (a VOLATILE function's statements see what committed before they ran). So, as with
the sequencer, one numbering commits at a time, in sequence order, and a reader never skips one.
It also tells the replicas' hubs, as a numbering pass does.

Events written by other statements are numbered by the sequencer as before; its wake-up now comes
only for those (a row trigger whose condition is that the event has no sequence).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0028"
down_revision: str | Sequence[str] | None = "0027"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = f"""
CREATE FUNCTION cronwire_take_sequences() RETURNS bigint LANGUAGE plpgsql VOLATILE
-- Tiny inputs the planner cannot size: compiling them (JIT) would cost more than running them.
SET jit = off
AS $$
DECLARE
    last bigint;
BEGIN
    -- Under the sequencer's lock (taken by the numbering, held until this transaction commits),
    -- the events committed before and not yet numbered come first: a run's QUEUED event, written
    -- by another statement, before the STARTED of the claim that saw it.
    PERFORM cronwire_number_events({2**31 - 1});
    SELECT coalesce(max(sequence), 0) INTO last FROM events;
    PERFORM pg_notify('cronwire_events', '');
    RETURN last;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_FUNCTION)
    op.execute("DROP TRIGGER events_notify ON events")
    op.execute(
        "CREATE TRIGGER events_notify AFTER INSERT ON events FOR EACH ROW "
        "WHEN (NEW.sequence IS NULL) EXECUTE FUNCTION cronwire_notify_events()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER events_notify ON events")
    op.execute(
        "CREATE TRIGGER events_notify AFTER INSERT ON events "
        "FOR EACH STATEMENT EXECUTE FUNCTION cronwire_notify_events()"
    )
    op.execute("DROP FUNCTION cronwire_take_sequences()")
