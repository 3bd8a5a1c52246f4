"""Wake-ups: "schedules changed" and "executions queued", in this process and across replicas.

In one process an asyncio.Event per channel is enough. With PostgreSQL every
replica also LISTENs; writers NOTIFY inside their transaction, so the wake-up
is delivered on commit. Notifications carry no payload (PostgreSQL caps it at
8,000 bytes): sleepers re-read the tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import psycopg
from sqlalchemy.engine import make_url

from cronwire_server.supervisor import DRAIN, Supervisor, loop_failed, loop_ok

log = logging.getLogger(__name__)

CHANNELS = ("schedules", "executions", "callbacks", "logs", "events", "events_new")
PG_PREFIX = "cronwire_"
RECONNECT_DELAY = 1.0


def pg_channel(channel: str) -> str:
    return PG_PREFIX + channel


async def _take(event: asyncio.Event, max_wait: float) -> bool:
    """Wait up to `max_wait` seconds for `event`, then clear it; whether it was set."""
    if not event.is_set():
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
        # arrives as the event is set, and a loop cancelled at shutdown would then run on.
        try:
            async with asyncio.timeout(max_wait):
                await event.wait()
        except TimeoutError:
            return False
    event.clear()
    return True


class Subscription:
    """One sleeper's own wake-ups of a channel: every signal reaches every subscription, and
    each takes it once. (A channel's shared wake-up is taken by whichever sleeper reads it first,
    so two loops sleeping on one channel would each miss the other's.)"""

    def __init__(self, event: asyncio.Event | None = None) -> None:
        self._event = event or asyncio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, max_wait: float) -> bool:
        """Wait up to `max_wait` seconds for a signal since the last wait; whether one came."""
        return await _take(self._event, max_wait)


class LocalWakeup:
    """Wake-ups within one process."""

    def __init__(self) -> None:
        self._events = {channel: asyncio.Event() for channel in CHANNELS}
        self._subscriptions: dict[str, list[Subscription]] = {channel: [] for channel in CHANNELS}

    def signal(self, channel: str) -> None:
        self._events[channel].set()
        for subscription in self._subscriptions[channel]:
            subscription.set()

    def subscribe(self, channel: str, event: asyncio.Event | None = None) -> Subscription:
        """Wake-ups of `channel` for one long-lived loop of its own, beside the shared ones; with
        `event`, signals set it (a loop that sleeps on one event for several reasons)."""
        subscription = Subscription(event)
        self._subscriptions[channel].append(subscription)
        return subscription

    @contextlib.contextmanager
    def subscribed(self, channel: str, event: asyncio.Event | None = None) -> Iterator[Subscription]:
        """`subscribe` for as long as the block runs: for sleepers that come and go (the followers
        of executions' output) and loops a supervisor may restart, removed when they leave."""
        subscription = self.subscribe(channel, event)
        try:
            yield subscription
        finally:
            self._subscriptions[channel].remove(subscription)

    async def wait(self, channel: str, max_wait: float) -> bool:
        return await _take(self._events[channel], max_wait)

    async def close(self) -> None:
        pass


class PostgresWakeup(LocalWakeup):
    """Local wake-ups plus LISTEN on a dedicated connection, reconnecting when it breaks."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self._conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._task: asyncio.Task[None] | None = None
        self._supervised = False

    def supervised_by(self, supervisor: Supervisor) -> None:
        """Run the listener as the supervisor's loop `listener` (a server), counted in health; it
        is stopped with the last loops, once running executions have drained."""
        self._supervised = True
        supervisor.start("listener", self.listen, phase=DRAIN)

    def start(self) -> None:
        """Start listening on first use, when no supervisor runs the listener (a bare store)."""
        if self._task is None and not self._supervised:
            self._task = asyncio.create_task(self.listen())

    async def listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
                    for channel in CHANNELS:
                        await conn.execute(f"LISTEN {pg_channel(channel)}")
                    loop_ok()
                    # Anything may have happened while we were not listening.
                    for channel in CHANNELS:
                        self.signal(channel)
                    async for notify in conn.notifies():
                        self.signal(notify.channel.removeprefix(PG_PREFIX))
            except (psycopg.Error, OSError) as error:
                loop_failed(error)
                log.warning("LISTEN connection lost (%s); reconnecting", type(error).__name__)
                await asyncio.sleep(RECONNECT_DELAY)
            except Exception as error:
                # Never die, supervised or not: without it sleepers only wake on their timeouts.
                loop_failed(error)
                log.exception("LISTEN loop failed; reconnecting")
                await asyncio.sleep(RECONNECT_DELAY)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
