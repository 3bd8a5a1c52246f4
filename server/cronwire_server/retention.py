"""Execution retention: finished executions that their job's policy (or the server-wide one, for jobs
without their own) no longer keeps are deleted with their output, in small batches, every few minutes
(by processes with the dispatcher role)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cronwire_server.core.errors import StorageUnavailable
from cronwire_server.core.model import RetentionPolicy
from cronwire_server.storage import Store
from cronwire_server.supervisor import loop_failed, loop_ok

log = logging.getLogger(__name__)

PRUNE_EVERY = 300.0
# Rows per transaction: short transactions, no long locks on a busy table.
PRUNE_BATCH = 200


class ExecutionPruner:
    def __init__(
        self, store: Store, policy: RetentionPolicy, *, every: float = PRUNE_EVERY, batch: int = PRUNE_BATCH
    ) -> None:
        self._store = store
        self._policy = policy
        self._every = every
        self._batch = batch

    async def run(self, stopping: asyncio.Event) -> None:
        # Even when the server keeps everything: jobs may have policies of their own.
        while not stopping.is_set():
            try:
                await self.prune_once(stopping)
                loop_ok()
            except StorageUnavailable as error:
                loop_failed(error)
                log.warning("execution retention: database unavailable (%s)", error)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._every):
                    await stopping.wait()

    async def prune_once(self, stopping: asyncio.Event | None = None) -> int:
        pruned = 0
        while stopping is None or not stopping.is_set():
            batch = await self._store.prune_executions(self._policy, limit=self._batch)
            pruned += batch
            if batch < self._batch:
                break
        if pruned:
            log.info(
                "pruned %d finished executions (keeping per job, unless it says otherwise, %s, %s)",
                pruned,
                f"the newest {self._policy.count}" if self._policy.count > 0 else "any number",
                f"none older than {self._policy.max_age}" if self._policy.max_age else "of any age",
            )
        return pruned
