"""The `noop` executor: runs nothing, records its arguments; for trying schedules out."""

from __future__ import annotations

import asyncio

from cronwire_server.core.model import ExecutionState
from cronwire_server.executors.runtime import OutputCallback, RunOutcome, RunRequest, cancelled_outcome, race

__all__ = ["NoopRunner"]


class NoopRunner:
    """Succeeds after `sleep_seconds` (default 0) with its arguments and parameters as the result."""

    async def run(
        self,
        request: RunRequest,
        cancel: asyncio.Event,
        on_output: OutputCallback | None = None,
    ) -> RunOutcome:
        if cancel.is_set():
            return cancelled_outcome()
        seconds = float(request.parameters.get("sleep_seconds", 0))
        if seconds <= 0:
            # Nothing to wait for, so nothing to race a timeout or a cancel against: done now.
            return self._succeeded(request)
        # The run lasts `seconds`, cut short by the timeout (only one shorter than that) or `cancel`.
        timeout = request.timeout
        if timeout is not None and timeout.total_seconds() >= seconds:
            timeout = None
        sleep = asyncio.ensure_future(asyncio.sleep(seconds))

        async def stop() -> None:
            sleep.cancel()

        stopped = await race(sleep, cancel, timeout, stop=stop, abandon=stop)
        if stopped is not None:
            state, error = stopped
            return RunOutcome(state, error=error)
        return self._succeeded(request)

    @staticmethod
    def _succeeded(request: RunRequest) -> RunOutcome:
        result = {"arguments": dict(request.arguments), "parameters": dict(request.parameters)}
        return RunOutcome(ExecutionState.SUCCEEDED, result=result)
