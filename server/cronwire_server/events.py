"""The event stream: numbering committed events, and fanning them out to watchers.

Every process runs a `Sequencer` (only one numbers at a time, see
`storage.sql_events.sequence_pending`) and, with the api role, one `EventHub`
that follows the numbered events in order and hands each watcher the batches
that match its filters: each distinct filter is matched once per read, and the
watchers whose filters take the same events share one batch object, so that the
API serializes it once for all of them. A watcher's buffer is bounded, in batches
and in bytes: one that falls behind is cut off and told to resume from its last
sequence, so it never slows the hub or the other watchers. Every read is bounded
in bytes as well as in rows, so however large the snapshots, a watcher (live or
replaying) or a listing holds a bounded page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cronwire_server import metrics
from cronwire_server.config import Settings
from cronwire_server.core.errors import OutOfRange, ResourceExhausted, StorageUnavailable
from cronwire_server.core.model import Event, EventFilter, Listing, Page
from cronwire_server.storage import Store
from cronwire_server.storage.base import EventPage
from cronwire_server.supervisor import loop_failed, loop_ok

log = logging.getLogger(__name__)

SEQUENCE_BATCH = 5000
# The least time from one numbering pass to the next (a bound on the passes per second, and on
# what it adds to an event's delivery). A pass costs PostgreSQL about 0.6 ms however few events
# it numbers; 25 ms saved database CPU at 200 runs/s but cost lag and CPU at 1,000/s
# (bench/README.md), so it stays at 10 ms.
SEQUENCE_GAP = 0.01
READ_BATCH = 1000
# Snapshot bytes (JSON text) per read: what one hub batch or replay page may hold (one event
# larger than this is still read, alone).
READ_BYTES = 1024 * 1024
LIST_BYTES = 1024 * 1024
# Re-read at least this often, in case a wake-up from another replica was lost.
POLL = 1.0
# Defaults of the server's settings, kept there (these serve callers that build a hub alone).
DEFAULT_BUFFER = Settings.watch_buffer  # batches a watcher may have waiting
DEFAULT_BUFFER_BYTES = 16 * 1024 * 1024  # and their snapshot bytes
# Batches a watcher that fell behind takes at once (also bounded by READ_BYTES).
COALESCE_BATCHES = 64
DEFAULT_HEARTBEAT = Settings.watch_heartbeat_seconds
DEFAULT_RETENTION = timedelta(days=Settings.event_retention_days)
PRUNE_EVERY = 600.0
PRUNE_BATCH = 1000


class WatcherTooSlow(ResourceExhausted):
    """A watcher fell further behind than its buffer holds; it should resume from its last sequence."""

    reason = "WATCHER_TOO_SLOW"


class EventsPruned(OutOfRange):
    """`after_sequence` is older than the retained events."""

    reason = "EVENTS_PRUNED"


class Sequencer:
    """Numbers committed events as they arrive; one per process, one numbering at a time overall."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def run(self, stopping: asyncio.Event) -> None:
        from cronwire_server.dispatcher import sleep_until_woken

        while not stopping.is_set():
            started = time.monotonic()
            try:
                while await self._store.sequence_events(SEQUENCE_BATCH) == SEQUENCE_BATCH:
                    pass
                loop_ok()
            except StorageUnavailable as error:
                loop_failed(error)
                log.warning("sequencer: database unavailable (%s)", error)
            await sleep_until_woken(self._store, "events_new", POLL, stopping)
            # Wake-ups that come within SEQUENCE_GAP of a pass (a busy scheduler writes events
            # in every turn) are numbered by one pass, not one each.
            gap = started + SEQUENCE_GAP - time.monotonic()
            if gap > 0 and not stopping.is_set():
                await asyncio.sleep(gap)


@dataclass(eq=False)
class Batch:
    """The events of one hub read that one filter takes, in sequence order.

    Every subscription whose filter takes the same events of a read is offered this same
    object, so what the API layer derives from it (the serialized responses, kept in
    `encoded`) is made once and shared by all of them, however many they are.
    """

    events: list[Event]
    size: int  # their snapshot bytes, as read
    encoded: dict[Any, Any] = field(default_factory=dict)


@dataclass
class FanOutCounts:
    """What the hub has done: hub reads fanned out, and the `Batch`es it made for them (one per
    distinct filter result of a read, shared by every watcher with that result)."""

    reads: int = 0
    batches: int = 0


# Of every hub of this process.
fan_out_counts = FanOutCounts()


@dataclass(eq=False)
class Subscription:
    where: EventFilter
    buffer: int
    buffer_bytes: int = DEFAULT_BUFFER_BYTES
    queue: asyncio.Queue[Batch] = field(init=False)
    queued_bytes: int = 0
    overflowed: bool = False

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.buffer)

    def offer(self, batch: Batch) -> None:
        """Queue `batch` (already filtered by `where`), or cut this subscription off."""
        if self.overflowed:
            return
        # One batch is always taken, however large: the hub read it with a byte bound already.
        if self.queue.full() or (self.queued_bytes and self.queued_bytes + batch.size > self.buffer_bytes):
            self.overflow()
            return
        self.queue.put_nowait(batch)
        self.queued_bytes += batch.size

    def overflow(self) -> None:
        """Cut off: what waits is dropped now, not when the watcher next reads (it may never)."""
        self.overflowed = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queued_bytes = 0

    async def get(self) -> list[Batch]:
        """The next batch, and those waiting behind it up to about a hub read's worth: a watcher
        that fell behind catches up in fewer, larger responses."""
        batches = [await self.queue.get()]
        size = batches[0].size
        while size < READ_BYTES and len(batches) < COALESCE_BATCHES and not self.queue.empty():
            batches.append(self.queue.get_nowait())
            size += batches[-1].size
        self.queued_bytes -= size
        return batches


def fan_out(events: list[Event], sizes: list[int], subscriptions: Iterable[Subscription]) -> None:
    """Offer each subscription the events of `events` its filter takes: each distinct filter is
    matched once, and subscriptions whose filters take the same events share one `Batch`."""
    by_filter: dict[EventFilter, Batch | None] = {}
    by_result: dict[tuple[int, ...], Batch] = {}
    for subscription in subscriptions:
        if subscription.overflowed:
            continue
        where = subscription.where
        if where in by_filter:
            shared = by_filter[where]
        else:
            taken = tuple(index for index, event in enumerate(events) if where.matches(event))
            shared = by_result.get(taken) if taken else None
            if taken and shared is None:
                chosen = events if len(taken) == len(events) else [events[index] for index in taken]
                size = sum(sizes[index] for index in taken) if sizes else 0
                shared = by_result[taken] = Batch(chosen, size)
                fan_out_counts.batches += 1
            by_filter[where] = shared
        if shared is not None:
            subscription.offer(shared)
    fan_out_counts.reads += 1


class EventHub:
    """Follows numbered events in sequence order and offers each batch to every subscription."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._subscriptions: set[Subscription] = set()
        self._watched = asyncio.Event()  # set while there is a subscription
        self.position = 0  # every event up to here has been offered

    async def start(self) -> None:
        """Start from the latest event: watchers replay older ones themselves."""
        self.position = await self._store.latest_event_sequence()

    async def catch_up(self) -> None:
        """Move an idle hub's position to the latest event, before its first subscription.

        While nobody watches the hub reads nothing (not even the latest sequence), so its
        position grows stale; the first watcher to come moves it, so that "from now" means now
        and a replay ends where the hub goes on. A watcher already subscribed keeps the position
        where it is: it needs every event after it.
        """
        if self._subscriptions:
            return
        latest = await self._store.latest_event_sequence()
        if not self._subscriptions:
            self.position = max(self.position, latest)

    async def follow(self, stopping: asyncio.Event) -> None:
        """Offer new events to the subscriptions until `stopping` (run under the supervisor)."""
        from cronwire_server.dispatcher import first_of, sleep_until_woken

        while not stopping.is_set():
            if not self._subscriptions:
                # Nobody watches: no reads at all until someone subscribes (see catch_up).
                loop_ok()
                await first_of(self._watched.wait(), stopping.wait())
                continue
            try:
                page = await self._store.read_event_page(
                    EventFilter(), after=self.position, limit=READ_BATCH, max_bytes=READ_BYTES
                )
                batch = page.events
                loop_ok()
            except StorageUnavailable as error:
                loop_failed(error)
                log.warning("event hub: database unavailable (%s)", error)
                page = EventPage([], [], cut=False)
                batch = []
            except Exception as error:  # the hub must outlive any one bad row
                loop_failed(error)
                log.exception("event hub: cannot read events after %d; retrying", self.position)
                await asyncio.sleep(POLL)
                continue
            if batch:
                fan_out(batch, page.sizes, list(self._subscriptions))
                self.position = batch[-1].sequence
            if len(batch) < READ_BATCH and not page.cut:
                await sleep_until_woken(self._store, "events", POLL, stopping)

    def subscribe(
        self, where: EventFilter, buffer: int = DEFAULT_BUFFER, buffer_bytes: int = DEFAULT_BUFFER_BYTES
    ) -> Subscription:
        subscription = Subscription(where, buffer, buffer_bytes)
        self._subscriptions.add(subscription)
        self._watched.set()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        if not self._subscriptions:
            self._watched.clear()

    @property
    def watchers(self) -> int:
        return len(self._subscriptions)


@dataclass(frozen=True)
class Delivery:
    """What a watcher is sent: batches of events (in order), or a heartbeat (none) with the bookmark.

    A batch the hub offered is sent as it is, the same object to every watcher whose filter took
    the same events (see `Batch`); a replayed page, or what is left of a batch the replay sent
    part of, is a batch of this watcher's own.
    """

    batches: list[Batch]
    latest_sequence: int


class EventManager:
    def __init__(
        self,
        store: Store,
        hub: EventHub,
        *,
        heartbeat: float = DEFAULT_HEARTBEAT,
        buffer: int = DEFAULT_BUFFER,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    ) -> None:
        self._store = store
        self._hub = hub
        self._heartbeat = heartbeat
        self._buffer = buffer
        self._buffer_bytes = buffer_bytes

    async def list_page(self, where: EventFilter, page: Page, after: int) -> Listing[Event]:
        start = max(after, int(page.after or 0))
        found = await self._store.read_event_page(
            where, after=start, limit=page.size + 1, max_bytes=LIST_BYTES
        )
        more = len(found.events) > page.size or found.cut
        items = found.events[: page.size]
        return Listing(items=items, next_after=str(items[-1].sequence) if more else None)

    async def watch(self, where: EventFilter, after: int) -> AsyncIterator[Delivery]:
        """Replay what is retained after `after` (0: nothing), then follow live; no gap, no duplicate.

        The subscription starts before the replay, so what is committed meanwhile waits in it;
        anything the replay already sent is dropped from it by sequence.
        """
        await self._hub.catch_up()
        subscription = self._hub.subscribe(where, self._buffer, self._buffer_bytes)
        metrics.watcher_opened()
        try:
            sent = self._hub.position if after <= 0 else after
            if after > 0:
                async for page in self._replay(where, after, self._hub.position):
                    # A replaying watcher that does not read is cut off like a live one: what
                    # happened meanwhile overflowed its buffer.
                    self._check_keeping_up(subscription, sent)
                    sent = page[-1].sequence
                    yield Delivery([Batch(page, 0)], sent)
                sent = max(sent, after)
            while True:
                self._check_keeping_up(subscription, sent)
                try:
                    async with asyncio.timeout(self._heartbeat):
                        batches = await subscription.get()
                except TimeoutError:
                    yield Delivery([], max(sent, self._hub.position))
                    continue
                fresh: list[Batch] = []
                for batch in batches:
                    if batch.events[0].sequence > sent:
                        fresh.append(batch)
                    elif batch.events[-1].sequence > sent:  # partly sent by the replay already
                        fresh.append(Batch([e for e in batch.events if e.sequence > sent], 0))
                if fresh:
                    sent = fresh[-1].events[-1].sequence
                    # The hub's position is a true bookmark only once nothing is left waiting here.
                    bookmark = self._hub.position if subscription.queue.empty() else sent
                    yield Delivery(fresh, bookmark)
        finally:
            self._hub.unsubscribe(subscription)
            metrics.watcher_closed()

    def _check_keeping_up(self, subscription: Subscription, sent: int) -> None:
        if subscription.overflowed:
            raise WatcherTooSlow(
                f"this watcher fell more than {self._buffer} batches or "
                f"{self._buffer_bytes // (1024 * 1024)} MiB behind; "
                f"reconnect with after_sequence={sent} to resume"
            )

    async def _replay(self, where: EventFilter, after: int, up_to: int) -> AsyncIterator[list[Event]]:
        oldest = await self._store.read_events(EventFilter(), after=0, limit=1)
        if oldest and after < oldest[0].sequence - 1:
            raise EventsPruned(
                f"events after sequence {after} are no longer retained; the oldest is {oldest[0].sequence}"
            )
        while True:
            page = await self._store.read_event_page(
                where, after=after, limit=READ_BATCH, max_bytes=READ_BYTES, up_to=up_to
            )
            batch = page.events
            if not batch:
                return
            yield batch
            after = batch[-1].sequence


class Pruner:
    """Deletes events older than the retention, in small batches, every few minutes."""

    def __init__(self, store: Store, retention: timedelta = DEFAULT_RETENTION) -> None:
        self._store = store
        self._retention = retention

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.prune_once(await self._store.now())
                loop_ok()
            except StorageUnavailable as error:
                loop_failed(error)
                log.warning("event retention: database unavailable (%s)", error)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PRUNE_EVERY):
                    await stopping.wait()

    async def prune_once(self, now: datetime) -> int:
        pruned = 0
        while (batch := await self._store.prune_events(now - self._retention, limit=PRUNE_BATCH)) > 0:
            pruned += batch
        if pruned:
            log.info("pruned %d events older than %s", pruned, self._retention)
        return pruned
