"""A worker's helper loops (heartbeat, recovery, output, callbacks, outcomes) outlive an
unexpected error: a loop that died silently would leave the runs it serves RUNNING for ever."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cronwire_server.workers import _kept_running


async def test_a_helper_loop_that_fails_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0
    restarted = asyncio.Event()

    async def flaky_loop() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        restarted.set()
        await asyncio.Event().wait()

    with caplog.at_level(logging.ERROR, logger="cronwire_server.workers"):
        task = asyncio.create_task(_kept_running(flaky_loop))
        try:
            async with asyncio.timeout(10):
                await restarted.wait()
        finally:
            task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == 2
    assert "flaky_loop failed; restarting it" in caplog.text
    assert "RuntimeError: boom" in caplog.text
