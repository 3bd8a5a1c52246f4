"""The `noop` executor: runs nothing, records its arguments; for trying schedules out."""

from __future__ import annotations

import asyncio

from cronwire_server.executors.runtime import OutputCallback, RunOutcome, RunRequest, describe_timeout
from cronwire_server.model import ExecutionState

__all__ = ["NoopRunner"]


class NoopRunner:
    """Succeeds after `sleep_seconds` (default 0) with its arguments and parameters as the result."""

    async def run(
        self,
        request: RunRequest,
        cancel: asyncio.Event,
        on_output: OutputCallback | None = None,
    ) -> RunOutcome:
        seconds = float(request.parameters.get("sleep_seconds", 0))
        timed_out = ""
        # The run lasts `seconds`, cut short by the timeout or by `cancel`.
        if request.timeout is not None and request.timeout.total_seconds() < seconds:
            seconds, timed_out = request.timeout.total_seconds(), describe_timeout(request.timeout)
        if await _set_within(cancel, seconds):
            return RunOutcome(ExecutionState.CANCELLED, error="cancelled")
        if timed_out:
            return RunOutcome(ExecutionState.TIMED_OUT, error=timed_out)
        result = {"arguments": dict(request.arguments), "parameters": dict(request.parameters)}
        return RunOutcome(ExecutionState.SUCCEEDED, result=result)


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    """Whether `event` is set within `seconds`."""
    if seconds <= 0:
        return event.is_set()
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=seconds)
    finally:
        waiter.cancel()
    return event.is_set()
