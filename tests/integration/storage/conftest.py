"""Fixtures of the storage tests on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from cronwire_server.storage.sql_store import SqlStore
from tests.integration.storage.sessions import own_engine


@pytest.fixture
async def plain(store: SqlStore) -> AsyncIterator[AsyncEngine]:
    """Sessions of the test's own on the database of the module's `store`."""
    async with own_engine(store) as engine:
        yield engine
