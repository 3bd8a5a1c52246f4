"""Alembic migrations, applied programmatically: users need no alembic.ini.

Migrations run on a blocking driver (pysqlite, psycopg in sync mode), so
`upgrade` never touches an event loop; from async code, `await upgrade_async(url)`
runs it in a worker thread.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from cronwire_server.storage.sql_engine import sync_url

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Each migration's file is named after its revision, and the revisions follow one another:
# 0001_initial.py, 0002_executions.py, ... (a test holds that to Alembic's reading of them).
_VERSION_FILES = "[0-9][0-9][0-9][0-9]_*.py"

# Replicas starting together must not migrate at once: they queue on this
# PostgreSQL advisory lock (an arbitrary constant, the same in every replica). Not the
# sequencer's ("cronwire", migration 0017), which the statements of every run hold with their
# tables' locks until they commit: a migration's DDL and such a statement would wait for each other.
_PG_MIGRATION_LOCK = 0x63726F6E776D6967  # "cronwmig"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for cronwire's migrations, run on `connection` (see migrations/env.py)."""
    from alembic.config import Config

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
    """Bring the database at `url` (any form `normalize_url` accepts) up to `revision`.

    A database already at the head is only read: Alembic, a good part of a replica's start-up to
    import, is loaded only when there is something to migrate."""
    engine = _sync_engine(url)
    try:
        if revision != "head" or _stored_revisions(engine) != [head_revision()]:
            _migrate(engine, revision)
        if engine.dialect.name == "sqlite":
            # Persistent in the file; switching here, once, spares the store's pool racing to do it.
            with engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    finally:
        engine.dispose()


def _migrate(engine: sa.Engine, revision: str) -> None:
    from alembic import command

    # One transaction: on PostgreSQL, DDL is transactional, so a failed upgrade leaves nothing half done.
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
        command.upgrade(alembic_config(connection), revision)


def _stored_revisions(engine: sa.Engine) -> list[str]:
    """The revisions Alembic recorded in the database (none if it was never migrated). A replica
    reading them while another migrates sees the old ones until that migration commits."""
    with engine.connect() as connection:
        if not sa.inspect(connection).has_table("alembic_version"):
            return []
        return list(connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())


async def upgrade_async(url: str, revision: str = "head") -> None:
    """`upgrade` without blocking the running event loop."""
    await asyncio.to_thread(upgrade, url, revision)


def head_revision() -> str:
    """The newest migration this code knows, from the names of the migrations' files."""
    return max(path.name[:4] for path in (MIGRATIONS_DIR / "versions").glob(_VERSION_FILES))


def current_revision(url: str) -> str | None:
    """The migration the database at `url` is at; None if it was never migrated."""
    engine = _sync_engine(url)
    try:
        revisions = _stored_revisions(engine)
    finally:
        engine.dispose()
    # One at most: the migrations follow one another, with no branches.
    return revisions[0] if revisions else None
