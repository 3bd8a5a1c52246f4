"""Execution operations the API exposes: run now, read, list, cancel, follow the output."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from cronwire_server.auth.principal import current_actor
from cronwire_server.core.model import (
    Execution,
    ExecutionState,
    JsonObject,
    Listing,
    OverlapPolicy,
    Page,
)
from cronwire_server.storage import Store
from cronwire_server.storage.base import ExecutionFilter

if TYPE_CHECKING:
    from cronwire_server.storage.wakeup import Subscription

LOG_BATCH = 100
# A follower re-reads at least this often, in case a wake-up from another replica was lost.
FOLLOW_POLL = 1.0


@dataclass(frozen=True)
class OutputPiece:
    """A piece of an execution's output, or (data "" and `final_state` set) the end of it."""

    offset: int
    data: str
    time: datetime | None = None
    final_state: ExecutionState | None = None


def _trim(offset: int, data: str, start: int) -> str:
    # A chunk may begin before the requested byte offset: drop what the caller has.
    if start <= offset:
        return data
    return data.encode()[start - offset :].decode(errors="ignore")


class ExecutionManager:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def run_job(
        self,
        namespace: str,
        job_id: str,
        arguments: JsonObject,
        *,
        request_id: str = "",
        respect_overlap: bool = False,
    ) -> Execution:
        """Queue a run now. With `respect_overlap`, while a run of one of the job's schedules
        whose overlap policy is SKIP is queued or running, the run is recorded SKIPPED
        (reason OVERLAP) and returned instead."""
        skip_while_running: list[str] = []
        if respect_overlap:
            after: str | None = None
            while True:
                listing = await self._store.list_schedules(namespace, Page(1000, after), job_id=job_id)
                skip_while_running += [s.id for s in listing.items if s.overlap_policy is OverlapPolicy.SKIP]
                if listing.next_after is None:
                    break
                after = listing.next_after
        return await self._store.run_job(
            namespace,
            job_id,
            arguments,
            request_id=request_id,
            actor=current_actor(),
            skip_while_running=skip_while_running,
        )

    async def get(self, namespace: str, execution_id: str) -> Execution:
        return await self._store.get_execution(namespace, execution_id)

    async def list_page(self, namespace: str, page: Page, where: ExecutionFilter) -> Listing[Execution]:
        return await self._store.list_executions(namespace, page, where)

    async def cancel(self, namespace: str, execution_id: str, reason: str) -> Execution:
        return await self._store.cancel_execution(namespace, execution_id, reason, actor=current_actor())

    async def output(
        self, namespace: str, execution_id: str, offset: int, follow: bool
    ) -> AsyncIterator[OutputPiece]:
        """The output from byte `offset` on; with `follow`, until the execution ends (then a final piece)."""
        if not follow:
            async for piece in self._output(namespace, execution_id, offset, None):
                yield piece
            return
        # Each follower its own wake-ups, from before its first read: many may follow at once (a
        # shared one is taken by whichever wakes first, and the others would wait a full poll).
        with self._store.wakeup.subscribed("logs") as woken:
            async for piece in self._output(namespace, execution_id, offset, woken):
                yield piece

    async def _output(
        self, namespace: str, execution_id: str, offset: int, woken: Subscription | None
    ) -> AsyncIterator[OutputPiece]:
        execution = await self._store.get_execution(namespace, execution_id)
        while True:
            chunks = await self._store.read_logs(namespace, execution_id, offset, LOG_BATCH)
            for start, data, time in chunks:
                piece = _trim(start, data, offset)
                if piece:
                    yield OutputPiece(offset, piece, time)
                    offset = max(offset, start) + len(piece.encode())
            if len(chunks) == LOG_BATCH:
                continue
            if execution.ended:
                # Output stored whole with the outcome but never chunked (or cut at the end).
                rest = execution.output.encode()[offset:].decode(errors="ignore")
                if rest:
                    yield OutputPiece(offset, rest, execution.end_time)
                    offset += len(rest.encode())
                yield OutputPiece(offset, "", execution.end_time, execution.state)
                return
            if woken is None:
                return
            await woken.wait(FOLLOW_POLL)
            execution = await self._store.get_execution(namespace, execution_id)
