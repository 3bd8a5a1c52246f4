"""The `remote` executor's local runner: there is none. Remote executions are taken by remote
workers over WorkerService (`remote_workers`); the local pool never claims them. This runner
only answers a run that reached a local pool anyway (a server older than the kind claimed it)."""

from __future__ import annotations

import asyncio

from cronwire_server.core.model import ExecutionState
from cronwire_server.executors.runtime import OutputCallback, RunOutcome, RunRequest

__all__ = ["RemoteRunner"]


class RemoteRunner:
    """Fails the run at once, saying where remote runs belong."""

    async def run(
        self,
        request: RunRequest,
        cancel: asyncio.Event,
        on_output: OutputCallback | None = None,
    ) -> RunOutcome:
        return RunOutcome(
            ExecutionState.FAILED,
            error="a remote execution runs on a remote worker of its queue, not on the server",
        )
