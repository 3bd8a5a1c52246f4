"""The supervisor: a loop that fails is logged and restarted, and counted down while it keeps failing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from cronwire_server.core.errors import StorageUnavailable
from cronwire_server.supervisor import Supervisor, loop_failed, loop_ok


async def _until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll `condition` until true, failing after `within` seconds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - the supervisor's state has no event to wait on
            await asyncio.sleep(0.01)


async def test_a_loop_that_raises_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    stopping = asyncio.Event()
    supervisor = Supervisor(stopping, first_backoff=0.01, max_backoff=0.02)
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError(f"bug number {runs}")
        loop_ok()
        await stopping.wait()

    with caplog.at_level(logging.ERROR, logger="cronwire_server.supervisor"):
        supervisor.start("flaky", flaky)
        await _until(lambda: runs == 3)
    assert supervisor.restarts("flaky") == 2
    failures = [r for r in caplog.records if "flaky failed; restarting" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.exc_info for r in failures)  # with the traceback
    assert supervisor.down() == []
    stopping.set()
    await supervisor.stop(within=1)


async def test_a_loop_failing_for_longer_than_down_after_is_down_until_it_works() -> None:
    stopping = asyncio.Event()
    supervisor = Supervisor(stopping, down_after=0.2, first_backoff=0.01, max_backoff=0.02)
    database_up = asyncio.Event()

    async def claimer() -> None:
        if not database_up.is_set():
            raise StorageUnavailable("the database is unavailable (AdminShutdown)")
        while not stopping.is_set():
            loop_ok()
            await asyncio.sleep(0.01)

    supervisor.start("claimer", claimer)
    await asyncio.sleep(0.05)
    assert supervisor.down() == []  # failing, but not for long yet
    await _until(lambda: supervisor.down() == ["claimer"])
    assert "AdminShutdown" in supervisor.last_error("claimer")
    database_up.set()
    await _until(lambda: supervisor.down() == [])
    stopping.set()
    await supervisor.stop(within=1)


async def test_a_loop_that_reports_its_own_failures_is_down_while_they_last() -> None:
    stopping = asyncio.Event()
    supervisor = Supervisor(stopping, down_after=0.2)
    healthy = False

    async def retrying() -> None:
        while not stopping.is_set():
            if healthy:
                loop_ok()
            else:
                loop_failed("database unavailable")
            await asyncio.sleep(0.01)

    supervisor.start("retrying", retrying)
    await _until(lambda: supervisor.down() == ["retrying"])
    assert supervisor.restarts("retrying") == 0  # it handled them itself
    healthy = True
    await _until(lambda: supervisor.down() == [])
    stopping.set()
    await supervisor.stop(within=1)


async def test_a_loop_that_returns_before_shutdown_is_restarted(caplog: pytest.LogCaptureFixture) -> None:
    stopping = asyncio.Event()
    supervisor = Supervisor(stopping, first_backoff=0.01)
    runs = 0

    async def quitter() -> None:
        nonlocal runs
        runs += 1
        if runs > 1:
            await stopping.wait()

    with caplog.at_level(logging.ERROR, logger="cronwire_server.supervisor"):
        supervisor.start("quitter", quitter)
        await _until(lambda: runs == 2)
    assert "quitter stopped unexpectedly" in caplog.text
    stopping.set()
    await supervisor.stop(within=1)
    assert runs == 2  # returning once stopping is set is the normal end, not restarted


async def test_stop_cancels_loops_that_do_not_return_and_only_the_phases_asked() -> None:
    stopping = asyncio.Event()
    supervisor = Supervisor(stopping)
    cancelled: list[str] = []

    def forever(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(name)
                raise

        return run

    supervisor.start("claimer", forever("claimer"))
    supervisor.start("finisher", forever("finisher"), phase="drain")
    stopping.set()
    await supervisor.stop(["main"], within=0.05)
    assert cancelled == ["claimer"]
    assert supervisor.down() == []  # stopped on purpose is not down
    await supervisor.stop(within=0)
    assert cancelled == ["claimer", "finisher"]


async def test_a_name_is_supervised_once() -> None:
    stopping = asyncio.Event()
    supervisor = Supervisor(stopping)
    supervisor.start("dispatcher", stopping.wait)
    with pytest.raises(ValueError, match="already supervised"):
        supervisor.start("dispatcher", stopping.wait)
    stopping.set()
    await supervisor.stop(within=1)
