"""API keys: hashed secrets scoped to namespaces with a role.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

Self-contained on purpose, like 0004.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
IDENT = sa.String().with_variant(sa.String(collation="C"), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", IDENT, nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        # A JSON list of namespaces; ["*"] is every namespace.
        sa.Column("namespaces", JSON, nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        # SHA-256 of the secret, hex: the secret itself is never stored.
        sa.Column("secret_sha256", sa.String(), nullable=False),
        sa.Column("create_time", TIMESTAMP, nullable=False),
        sa.Column("revoke_time", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
