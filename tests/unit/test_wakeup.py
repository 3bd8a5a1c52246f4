"""Wake-ups: a sleeper cancelled at shutdown stops, even when its wake-up arrives at that moment."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from cronwire_server.storage.wakeup import LocalWakeup


async def test_a_signal_wakes_the_sleeper_at_once() -> None:
    wakeup = LocalWakeup()
    sleeper = asyncio.create_task(wakeup.wait("executions", 30))
    await asyncio.sleep(0)
    wakeup.signal("executions")
    assert await asyncio.wait_for(sleeper, 5) is True


async def test_without_a_signal_the_sleeper_returns_after_its_wait() -> None:
    assert await LocalWakeup().wait("schedules", 0.01) is False


@pytest.mark.parametrize("steps_between", [0, 1, 2, 3, 4])
async def test_cancel_is_never_lost_when_the_signal_arrives_together(steps_between: int) -> None:
    # A loop cancelled at shutdown must end; a wake-up landing in the same instant must not
    # swallow the cancellation (asyncio.wait_for does on Python 3.11).
    wakeup = LocalWakeup()
    sleeper = asyncio.create_task(wakeup.wait("callbacks", 30))
    await asyncio.sleep(0)
    wakeup.signal("callbacks")
    for _ in range(steps_between):
        await asyncio.sleep(0)
    if sleeper.cancel():
        with pytest.raises(asyncio.CancelledError):
            await sleeper
    else:  # it had already finished
        assert sleeper.result() is True


async def test_a_subscription_keeps_a_signal_another_sleeper_took() -> None:
    # The local pool takes the shared wake-up of "executions"; the remote workers' dispatcher,
    # busy at that moment, still finds it on its own subscription when it sleeps next.
    wakeup = LocalWakeup()
    own = wakeup.subscribe("executions")
    wakeup.signal("executions")
    assert await wakeup.wait("executions", 0.01) is True  # taken by the shared sleeper
    assert await wakeup.wait("executions", 0.01) is False
    assert await own.wait(0.01) is True  # and still there for the subscriber, once
    assert await own.wait(0.01) is False


async def test_a_subscription_hears_only_its_channel() -> None:
    wakeup = LocalWakeup()
    own = wakeup.subscribe("executions")
    wakeup.signal("schedules")
    assert await own.wait(0.01) is False


async def test_every_follower_of_the_logs_hears_each_signal_and_one_that_left_is_let_go() -> None:
    # Followers of executions' output come and go: each has its own wake-ups for as long as it
    # follows (a shared one would wake only the first of them), and leaving lets it go.
    wakeup = LocalWakeup()
    with wakeup.subscribed("logs") as first, wakeup.subscribed("logs") as second:
        wakeup.signal("logs")
        assert await first.wait(0.01) is True
        assert await second.wait(0.01) is True
        left = weakref.ref(first)
    del first, second
    gc.collect()
    assert left() is None
