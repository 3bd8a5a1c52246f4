"""This process in the replica registry: registered at start, heartbeating, removed at a clean stop.

`cronwire status` (ClusterService.GetClusterStatus) lists the registry, with the background loops each
replica has down. A replica that dies without stopping cleanly stops heartbeating and shows as not
alive; its row is pruned once silent for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import Callable
from datetime import datetime, timedelta

from cronwire_server import __version__
from cronwire_server.core.errors import StorageUnavailable
from cronwire_server.core.model import Replica
from cronwire_server.storage import Store
from cronwire_server.supervisor import loop_failed, loop_ok

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 5.0
# Rows of replicas silent this long are deleted (by any replica).
FORGET_AFTER = timedelta(hours=1)
REMOVE_WITHIN = 2.0


def this_replica(
    identity: str, roles: frozenset[str], heartbeat_seconds: float, started_at: datetime
) -> Replica:
    """This process, started at `started_at` by the database's clock."""
    return Replica(
        id=identity,
        hostname=socket.gethostname(),
        pid=os.getpid(),
        version=__version__,
        roles=roles,
        heartbeat_seconds=heartbeat_seconds,
        started_at=started_at,
    )


class ReplicaHeartbeat:
    """Keeps `replica`'s row fresh, with the loops `loops_down` names, until `stopping` is set, then
    deletes it."""

    def __init__(
        self,
        store: Store,
        replica: Replica,
        forget_after: timedelta = FORGET_AFTER,
        loops_down: Callable[[], list[str]] = list,
    ) -> None:
        self._store = store
        self.replica = replica
        self._forget_after = forget_after
        self._loops_down = loops_down
        self._registered = False

    async def register(self) -> None:
        """Insert the row now (the loop does it later if the database cannot be reached)."""
        try:
            await self._store.register_replica(self.replica)
        except StorageUnavailable as error:
            log.warning("replica registry: database unavailable (%s)", error)
            return
        self._registered = True
        log.info("registered as replica %s", self.replica.id)

    async def run(self, stopping: asyncio.Event) -> None:
        try:
            while not stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.replica.heartbeat_seconds):
                        await stopping.wait()
                if stopping.is_set():
                    break
                down = tuple(self._loops_down())
                try:
                    if not self._registered:
                        await self.register()
                    elif not await self._store.heartbeat_replica(self.replica.id, down):
                        # Pruned while cut off from the database for long: register again.
                        await self._store.register_replica(dataclasses.replace(self.replica, loops_down=down))
                    await self._store.prune_replicas(self._forget_after)
                    loop_ok()
                except StorageUnavailable as error:
                    loop_failed(error)
                    log.warning("replica heartbeat: database unavailable (%s)", error)
        finally:
            if self._registered:
                await self._remove()

    async def _remove(self) -> None:
        try:
            async with asyncio.timeout(REMOVE_WITHIN):
                await self._store.remove_replica(self.replica.id)
        except (StorageUnavailable, TimeoutError) as error:
            log.warning("could not remove replica %s from the registry (%r)", self.replica.id, error)
