"""Sessions of a test's own beside a store's (PostgreSQL): to hold locks the store's statements
then wait for, and to see which of the store's sessions wait."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from cronwire_server.storage.sql_store import SqlStore


@asynccontextmanager
async def own_engine(store: SqlStore) -> AsyncIterator[AsyncEngine]:
    """Sessions on the store's database, in transactions of their own (the store's autocommit)."""
    engine = create_async_engine(store.engine.url, poolclass=NullPool)
    try:
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def watching(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A session outside transactions: each look at pg_stat_activity sees it as it is now."""
    async with engine.connect() as conn:
        yield await conn.execution_options(isolation_level="AUTOCOMMIT")


async def waiting_on_a_lock(conn: AsyncConnection, store: SqlStore) -> list[int]:
    """The store's sessions waiting for a lock (a table's or an advisory one)."""
    found = await conn.execute(
        sa.text(
            "SELECT pid FROM pg_stat_activity WHERE datname = :db AND wait_event_type = 'Lock' "
            "AND application_name = 'cronwire'"
        ),
        {"db": make_url(str(store.engine.url)).database},
    )
    return [int(pid) for pid in found.scalars()]
