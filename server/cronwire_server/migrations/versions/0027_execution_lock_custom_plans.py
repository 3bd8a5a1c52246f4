"""A finish's rows locked by a plan made for the table as it is (PostgreSQL).

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-05

`cronwire_lock_executions` (0026) runs a query whose plan PostgreSQL keeps for the session once it
has chosen a generic one. Chosen while `executions` is nearly empty (a new database, the first
runs of a burst), every index whose first column is the namespace costs what the primary key
does, and the plan kept may look each row up by the namespace alone and filter the rest: in a
3,000-run burst on a new database, a finish of 16 then read 2,870 rows for each. A session with
few finishes chose late enough to be spared; one that sends every finish (the finishes' own
connection, `storage.sql_wire`) chose at once. The function now plans its query at every call
(`plan_cache_mode`), from the table's size then: a small query, planned in a fraction of what one
row read by the wrong index costs.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0027"
down_revision: str | Sequence[str] | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = "cronwire_lock_executions(text[], text[])"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER FUNCTION {_FUNCTION} SET plan_cache_mode = force_custom_plan")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER FUNCTION {_FUNCTION} RESET plan_cache_mode")
