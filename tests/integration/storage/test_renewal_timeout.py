"""A lease renewal that cannot finish (a row lock held by a stuck transaction) gives up after the
renewal timeout with the retryable error, instead of holding the renewal thread for as long as
the lock is held; once the lock goes, renewals succeed again (PostgreSQL, a real store)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta

import psycopg
import pytest

from cronwire_server.core.errors import StorageUnavailable
from cronwire_server.core.model import Job
from cronwire_server.storage import sql_store
from cronwire_server.storage.sql_store import open_store, sync_url

pytestmark = pytest.mark.postgres

NS = "renew"
WORKER = "host:1:abc"
LEASE = timedelta(seconds=60)


async def test_a_renewal_blocked_by_a_row_lock_gives_up_then_recovers(
    fresh_database_url: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_store, "RENEWAL_TIMEOUT", 1)
    url = fresh_database_url("postgres")
    store = await open_store(url)
    renewals = store.blocking_renewals()
    try:
        await store.create_job(Job(namespace=NS, id="noop", executor="noop", parameters={}))
        await store.run_job(NS, "noop", {})
        (claimed,) = await store.claim_executions(WORKER, 1, LEASE)
        execution_id = claimed.execution.id
        libpq_url = sync_url(url).replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(libpq_url) as stuck:  # a transaction holding the run's row
            stuck.execute("SELECT 1 FROM executions WHERE id = %s FOR UPDATE", (execution_id,))
            started = time.monotonic()
            with pytest.raises(StorageUnavailable):
                await asyncio.to_thread(renewals.renew, WORKER, [execution_id], LEASE)
            waited = time.monotonic() - started
            assert 0.9 <= waited < 10, waited  # the statement timeout, not the lock's release
            stuck.rollback()
        renewed = await asyncio.to_thread(renewals.renew, WORKER, [execution_id], LEASE)
        assert not renewed.lost
        assert not renewed.cancelled
    finally:
        renewals.close()
        await store.close()
