"""Watching this replica's clock against the database's.

Every time the service decides by or stores is the database's, so a replica with a wrong clock
still schedules right; but its logs, its job processes and anything else on the host keep the
host's time. The replica says so in its log, so an operator can fix the host's clock.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from datetime import UTC, datetime, timedelta

from cronwire_server.core.errors import StorageUnavailable
from cronwire_server.storage import Store
from cronwire_server.supervisor import loop_failed, loop_ok

log = logging.getLogger(__name__)

CHECK_EVERY = 60.0
RETRY_AFTER = 5.0
TOLERANCE = timedelta(seconds=1)


class ClockCheck:
    """Compares the local clock with the database's at start and every `every` seconds, and
    logs a warning while they differ by more than `tolerance`."""

    def __init__(self, store: Store, *, every: float = CHECK_EVERY, tolerance: timedelta = TOLERANCE) -> None:
        self._store = store
        self._every = every
        self._tolerance = tolerance

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.check()
                loop_ok()
                delay = self._every
            except StorageUnavailable as error:
                loop_failed(error)
                log.warning("cannot compare this replica's clock with the database's: %s", error)
                delay = RETRY_AFTER
            with suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stopping.wait()

    async def check(self) -> timedelta | None:
        """How far this replica's clock is ahead of the database's (negative: behind), if that
        is surely more than the tolerance; None otherwise."""
        before = datetime.now(UTC)
        database = await self._store.now()
        after = datetime.now(UTC)
        # The database read its clock somewhere in the round trip: compare with the middle of it,
        # and allow for half of it.
        half_trip = (after - before) / 2
        skew = before + half_trip - database
        if abs(skew) - half_trip <= self._tolerance:
            return None
        direction = "ahead of" if skew > timedelta(0) else "behind"
        log.warning(
            "this replica's clock is %.1f s %s the database's: the service keeps to the database's "
            "clock, but this host's logs and job processes do not; synchronize the host's clock (NTP)",
            abs(skew.total_seconds()),
            direction,
        )
        return skew
