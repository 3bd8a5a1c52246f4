"""Event numbering planned once per session (PostgreSQL).

Revision ID: 0030
Revises: 0029
Create Date: 2026-12-05

`cronwire_number_events(batch)` (0017), which every numbering calls (the sequencer's, and those of
the statements of every run, 0028), was planned again at nearly every call: PostgreSQL priced the
plan for any `batch` above the one for the batch given and kept making custom plans. Planning cost
it four times what running did (in a 3,000-run burst, 77 ms of planning against 18 ms of running,
about 0.03 ms of PostgreSQL's time per run).

It now keeps one plan for the session. One plan fits every call only if it never reads the table
in full, whatever the statistics said when it was made (as 0027 found for another function, a plan
made while a table is nearly empty may be kept while it grows): with sequential scans off as well
as bitmap scans, the pending events are read in order through their partial index and stop at the
batch, each is found again by its primary key, and the last sequence is read from the end of its
index. A plan is made again when the table's statistics change.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0030"
down_revision: str | Sequence[str] | None = "0029"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = "cronwire_number_events(integer)"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER FUNCTION {_FUNCTION} SET plan_cache_mode = force_generic_plan")
        op.execute(f"ALTER FUNCTION {_FUNCTION} SET enable_seqscan = off")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER FUNCTION {_FUNCTION} RESET plan_cache_mode")
        op.execute(f"ALTER FUNCTION {_FUNCTION} RESET enable_seqscan")
