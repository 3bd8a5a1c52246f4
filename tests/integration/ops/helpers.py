"""Helpers of the operations tests: direct reads and writes to a test database, bypassing the server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cronwire_server.storage.sql_store import sync_url
from cronwire_server.storage.tables import executions

T = TypeVar("T")


@contextmanager
def database(database_url: str) -> Iterator[Connection]:
    """One transaction on the test database, with the server's table definitions (so times are
    stored the way the server stores them on either backend)."""
    engine = sa.create_engine(sync_url(database_url))
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


async def in_database(database_url: str, work: Callable[[Connection], T]) -> T:
    """Run `work` in one transaction on the test database, off the event loop: servers running on
    the loop must be able to finish their own transactions meanwhile (SQLite has one writer)."""

    def run() -> T:
        with database(database_url) as conn:
            return work(conn)

    return await asyncio.to_thread(run)


async def shift_times(database_url: str, execution_ids: list[str], delta: timedelta, *columns: str) -> None:
    """Move `columns` of the executions by `delta` (negative: into the past)."""

    def shift(conn: Connection) -> None:
        for execution_id in execution_ids:
            row = conn.execute(
                sa.select(*(executions.c[c] for c in columns)).where(executions.c.id == execution_id)
            ).one()
            moved = {c: value + delta for c, value in zip(columns, row, strict=True) if value is not None}
            conn.execute(sa.update(executions).where(executions.c.id == execution_id).values(moved))

    await in_database(database_url, shift)
