"""Health that follows the database: NOT_SERVING while it cannot be reached, SERVING once it answers.

A load balancer that checks `grpc.health.v1.Health` then sends no calls to a replica that would only
fail them. The check runs on a connection of its own, so a pool busy with work does not read as an
outage. Once shutdown has begun the servicer ignores every further `set`: never SERVING again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import sqlalchemy as sa
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from sqlalchemy.ext.asyncio import AsyncEngine

from cronwire_server.storage.sql_store import create_engine

log = logging.getLogger(__name__)

CHECK_EVERY = 1.0
CHECK_TIMEOUT = 2.0

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DatabaseHealth:
    """Checks the database every `every` seconds (`SELECT 1`, at most `timeout` seconds) and sets the
    status of every name in `services` ("" is the server as a whole) to match."""

    def __init__(
        self,
        database_url: str,
        health: HealthServicer,
        services: Sequence[str],
        *,
        every: float = CHECK_EVERY,
        timeout: float = CHECK_TIMEOUT,
    ) -> None:
        self._url = database_url
        self._health = health
        self._services = tuple(services)
        self._every = every
        self._timeout = timeout
        self.reachable = True  # the server starts SERVING: it has just migrated the database

    async def run(self, stopping: asyncio.Event) -> None:
        engine = create_engine(self._url, pool_size=1)
        try:
            while not stopping.is_set():
                await self._update(await self._check(engine))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._every):
                        await stopping.wait()
        finally:
            await engine.dispose()

    async def _check(self, engine: AsyncEngine) -> str:
        """ "" when the database answers, else why not."""
        try:
            async with asyncio.timeout(self._timeout):
                async with engine.connect() as conn:
                    await conn.execute(sa.text("SELECT 1"))
        except TimeoutError:
            return f"no answer within {self._timeout:g}s"
        except (sa.exc.SQLAlchemyError, OSError) as error:
            return type(getattr(error, "orig", None) or error).__name__
        return ""

    async def _update(self, problem: str) -> None:
        reachable = not problem
        if reachable == self.reachable:
            return
        self.reachable = reachable
        if reachable:
            log.info("the database answers again: health SERVING")
        else:
            log.warning("the database is unreachable (%s): health NOT_SERVING", problem)
        for name in self._services:
            await self._health.set(name, SERVING if reachable else NOT_SERVING)
