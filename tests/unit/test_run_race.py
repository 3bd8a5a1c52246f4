"""`runtime.race`, the wait every runner makes for its work, its timeout and a cancel."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from cronwire_server.core.model import ExecutionState
from cronwire_server.executors.runtime import race

BOUND = 3.0


class Work:
    """A run's work as a future, with what `race` did to it."""

    def __init__(self) -> None:
        self.future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.calls: list[str] = []

    async def stop(self) -> None:
        self.calls.append("stop")
        if not self.future.done():
            self.future.cancel()

    async def abandon(self) -> None:
        self.calls.append("abandon")
        self.future.cancel()

    async def race(self, cancel: asyncio.Event, time_limit: timedelta | None) -> object:
        return await asyncio.wait_for(
            race(self.future, cancel, time_limit, stop=self.stop, abandon=self.abandon), BOUND
        )


async def test_work_finished_first_is_finished_and_still_stopped() -> None:
    work = Work()
    cancel = asyncio.Event()
    asyncio.get_running_loop().call_soon(work.future.set_result, "done")
    assert await work.race(cancel, timedelta(seconds=60)) is None
    # Stopped all the same: a finished program may leave processes behind in its group.
    assert work.calls == ["stop"]
    assert work.future.result() == "done"


async def test_work_finished_just_as_it_was_cancelled_counts_as_finished() -> None:
    work = Work()
    cancel = asyncio.Event()
    work.future.set_result("done")
    cancel.set()
    assert await work.race(cancel, timedelta(seconds=60)) is None


async def test_timeout_first_is_timed_out_with_its_duration() -> None:
    work = Work()
    stopped = await work.race(asyncio.Event(), timedelta(seconds=0.05))
    assert stopped == (ExecutionState.TIMED_OUT, "timed out after 0.05s")
    assert work.calls == ["stop"]
    assert work.future.cancelled()


async def test_cancel_first_is_cancelled() -> None:
    work = Work()
    cancel = asyncio.Event()
    asyncio.get_running_loop().call_soon(cancel.set)
    stopped = await work.race(cancel, None)
    assert stopped == (ExecutionState.CANCELLED, "cancelled")
    assert work.calls == ["stop"]
    assert work.future.cancelled()


async def test_cancel_before_the_timeout_wins_over_it() -> None:
    work = Work()
    cancel = asyncio.Event()
    cancel.set()
    assert await work.race(cancel, timedelta(0)) == (ExecutionState.CANCELLED, "cancelled")


async def test_the_callers_own_cancellation_abandons_the_work_and_propagates() -> None:
    work = Work()
    waiting = race(work.future, asyncio.Event(), None, stop=work.stop, abandon=work.abandon)
    task = asyncio.ensure_future(waiting)
    for _ in range(3):  # let it start waiting
        await asyncio.sleep(0)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, BOUND)
    assert work.calls == ["abandon"]
    assert work.future.cancelled()
