"""Alembic migrations, applied programmatically: users need no alembic.ini.

Migrations run on a blocking driver (pysqlite, psycopg in sync mode), so
`upgrade` never touches an event loop; from async code, `await upgrade_async(url)`
runs it in a worker thread.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from cronwire_server.storage.sql_engine import sync_url

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

# Replicas starting together must not migrate at once: they queue on this
# PostgreSQL advisory lock (an arbitrary constant, the same in every replica). Not the
# sequencer's ("cronwire", migration 0017), which the statements of every run hold with their
# tables' locks until they commit: a migration's DDL and such a statement would wait for each other.
_PG_MIGRATION_LOCK = 0x63726F6E776D6967  # "cronwmig"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for cronwire's migrations, run on `connection` (see migrations/env.py)."""
    config = Config()
    # Escaped: Alembic's config parser would treat a "%" in the install path as interpolation.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _sync_engine(url: str) -> sa.Engine:
    # No pool: a PostgreSQL template database must have no idle sessions left behind.
    return sa.create_engine(sync_url(url), poolclass=NullPool)


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` (any form `normalize_url` accepts) up to `revision`."""
    engine = _sync_engine(url)
    try:
        # One transaction: on PostgreSQL, DDL is transactional, so a failed upgrade leaves nothing half done.
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
            command.upgrade(alembic_config(connection), revision)
        if engine.dialect.name == "sqlite":
            # Persistent in the file; switching here, once, spares the store's pool racing to do it.
            with engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    finally:
        engine.dispose()


async def upgrade_async(url: str, revision: str = "head") -> None:
    """`upgrade` without blocking the running event loop."""
    await asyncio.to_thread(upgrade, url, revision)


def head_revision() -> str | None:
    """The newest migration this code knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(url: str) -> str | None:
    """The migration the database at `url` is at; None if it was never migrated."""
    engine = _sync_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
