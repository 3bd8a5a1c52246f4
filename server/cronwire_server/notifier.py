"""The alert loops of a replica, each run by the supervisor; every replica of the API role runs
them, and they share the work through the database (`storage.sql_notifications`):

- `notifier`: events -> incidents and pending deliveries, per rule (one per incident, rate
  limited per route);
- `notification-sender`: sends due deliveries, retried with backoff (at most `MAX_ATTEMPTS`), each
  attempt recorded;
- `deadline-watch`: finds the ticks that missed a deadline on the database's clock, records each
  once with its DEADLINE_MISSED event, and counts it in metrics; likewise the check-ins whose
  awaited ping did not come within their grace (CHECKIN_MISSED).

Memory stays bounded: each pass reads a bounded batch; the sender holds at most `SEND_BATCH`
deliveries and sends at most `PARALLEL` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from cronwire_server import metrics
from cronwire_server.core.checkins import next_tick
from cronwire_server.core.errors import StorageUnavailable
from cronwire_server.destinations import Sender, kind_of
from cronwire_server.storage.sql_notifications import ClaimedDelivery, NotificationStore
from cronwire_server.supervisor import Supervisor, loop_failed, loop_ok

log = logging.getLogger(__name__)

EVENT_BATCH = 200
SEND_BATCH = 20
PARALLEL = 5
MAX_ATTEMPTS = 5
FIRST_BACKOFF = timedelta(seconds=2)
MAX_BACKOFF = timedelta(minutes=5)
# A claimed delivery is another replica's to retry if not recorded within this.
SEND_LEASE = timedelta(seconds=60)
KEEP = timedelta(days=14)


def backoff(attempts_made: int) -> timedelta | None:
    """The wait before the next attempt after `attempts_made` failed ones; None: give up."""
    if attempts_made >= MAX_ATTEMPTS:
        return None
    wait: timedelta = FIRST_BACKOFF * (2 ** (attempts_made - 1))
    return min(wait, MAX_BACKOFF)


async def _pause(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stopping.wait()


class Alerts:
    """The three loops, over one store and one sender."""

    def __init__(self, store: NotificationStore, sender: Sender, *, every: float = 1.0) -> None:
        self._store = store
        self._sender = sender
        self._every = every

    def start(self, supervisor: Supervisor, stopping: asyncio.Event) -> None:
        supervisor.start("notifier", lambda: self._notify(stopping))
        supervisor.start("notification-sender", lambda: self._send(stopping))
        supervisor.start("deadline-watch", lambda: self._watch(stopping))

    async def _notify(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                read = await self._store.notify_pass(EVENT_BATCH)
                loop_ok()
            except StorageUnavailable as error:
                loop_failed(error)
                log.warning("notifier: database unavailable (%s)", error)
                read = 0
            if read < EVENT_BATCH:
                await _pause(stopping, self._every)

    async def _send(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                claimed = await self._store.claim_deliveries(SEND_BATCH, SEND_LEASE)
                loop_ok()
            except StorageUnavailable as error:
                loop_failed(error)
                log.warning("notification sender: database unavailable (%s)", error)
                claimed = []
            if claimed:
                await self._send_all(claimed)
            if len(claimed) < SEND_BATCH:
                await _pause(stopping, self._every / 2)

    async def _send_all(self, claimed: list[ClaimedDelivery]) -> None:
        """Send a claimed batch, at most PARALLEL at once; tasks of this pass only, awaited here."""
        limit = asyncio.Semaphore(PARALLEL)

        async def one(item: ClaimedDelivery) -> None:
            async with limit:
                try:
                    await self._attempt(item)
                except StorageUnavailable as error:
                    # Its lease runs out and it is tried again; the others of the batch go on.
                    loop_failed(error)
                    log.warning("notification %s: database unavailable (%s)", item.delivery.name, error)

        async with asyncio.TaskGroup() as group:
            for item in claimed:
                group.create_task(one(item))

    async def _attempt(self, item: ClaimedDelivery) -> None:
        delivery, route = item.delivery, item.route
        sent = await self._sender.send(delivery, route)
        retry_in = None if sent.delivered or sent.permanent else backoff(delivery.attempts + 1)
        outcome = "delivered" if sent.delivered else "retrying" if retry_in is not None else "failed"
        metrics.NOTIFICATIONS.labels(destination=kind_of(route), outcome=outcome).inc()
        if not sent.delivered:
            log.warning(
                "notification %s to %s: attempt %d failed (%s); %s",
                delivery.name,
                route.name,
                delivery.attempts + 1,
                sent.error,
                f"retrying in {retry_in.total_seconds():g}s" if retry_in else "giving up",
            )
        await self._store.record_attempt(
            delivery,
            delivered=sent.delivered,
            http_status=sent.http_status,
            error=sent.error,
            retry_in=retry_in,
        )

    async def _watch(self, stopping: asyncio.Event) -> None:
        passes = 0
        while not stopping.is_set():
            try:
                found = await self._store.deadline_pass(next_tick)
                for _, miss in found.misses:
                    metrics.DEADLINES_MISSED.labels(deadline=miss.kind.value).inc()
                passes += 1
                if passes % 3600 == 1:
                    await self._store.prune((await self._store.now()) - KEEP)
                loop_ok()
            except StorageUnavailable as error:
                loop_failed(error)
                log.warning("deadline watch: database unavailable (%s)", error)
            await _pause(stopping, self._every)
