"""Health that tells the truth: NOT_SERVING while the database cannot be reached or any background
loop of the replica is down (see `supervisor`), SERVING once the database answers and every loop runs.

A load balancer that checks `grpc.health.v1.Health` then sends no calls to a replica that would only
fail them, and an operator sees a replica that stopped scheduling. The database check runs on a
connection of its own, so a pool busy with work does not read as an outage. Once shutdown has begun
the servicer ignores every further `set`: never SERVING again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from sqlalchemy.ext.asyncio import AsyncEngine

from cronwire_server.storage.sql_engine import create_engine

log = logging.getLogger(__name__)

CHECK_EVERY = 1.0
CHECK_TIMEOUT = 2.0

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ReplicaHealth:
    """Every `every` seconds checks the database (`SELECT 1`, at most `timeout` seconds) and asks
    `loops_down` which loops are down, and sets the status of every name in `services` ("" is the
    server as a whole) to match."""

    def __init__(
        self,
        database_url: str,
        health: HealthServicer,
        services: Sequence[str],
        loops_down: Callable[[], list[str]] = list,
        *,
        every: float = CHECK_EVERY,
        timeout: float = CHECK_TIMEOUT,
    ) -> None:
        self._url = database_url
        self._health = health
        self._services = tuple(services)
        self._loops_down = loops_down
        self._every = every
        self._timeout = timeout
        self.problem = ""  # the server starts SERVING: it has just migrated the database

    async def run(self, stopping: asyncio.Event) -> None:
        engine = create_engine(self._url, pool_size=1)
        try:
            while not stopping.is_set():
                problem = await self._check(engine)
                if problem:
                    problem = f"the database is unreachable ({problem})"
                elif down := self._loops_down():
                    problem = f"background loops down: {', '.join(down)}"
                await self._update(problem)
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
        if problem == self.problem:
            return
        was_serving = not self.problem
        self.problem = problem
        if not problem:
            log.info("the database answers and every loop runs again: health SERVING")
        else:
            log.warning("%s: health NOT_SERVING", problem)
        if was_serving != (not problem):
            for name in self._services:
                await self._health.set(name, NOT_SERVING if problem else SERVING)
