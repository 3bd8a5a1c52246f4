"""Execution operations the API exposes: run now, read, list, cancel."""

from __future__ import annotations

from cronwire_server.model import Execution, JsonObject, Listing, Page
from cronwire_server.storage import Store
from cronwire_server.storage.base import ExecutionFilter


class ExecutionManager:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def run_job(
        self, namespace: str, job_id: str, arguments: JsonObject, *, request_id: str = ""
    ) -> Execution:
        return await self._store.run_job(namespace, job_id, arguments, request_id=request_id)

    async def get(self, namespace: str, execution_id: str) -> Execution:
        return await self._store.get_execution(namespace, execution_id)

    async def list_page(self, namespace: str, page: Page, where: ExecutionFilter) -> Listing[Execution]:
        return await self._store.list_executions(namespace, page, where)

    async def cancel(self, namespace: str, execution_id: str, reason: str) -> Execution:
        return await self._store.cancel_execution(namespace, execution_id, reason)
