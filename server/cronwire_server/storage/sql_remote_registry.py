"""Which remote workers are connected, to which replica: one row per open WorkerService stream,
written by the replica that holds it, read by any replica for the cluster status.

A replica reports its streams every few seconds in one transaction (its rows replaced), and
removes the rows of replicas that stopped reporting a minute ago (they died). Times are the
database's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from cronwire_server.storage.sql_engine import unavailable_on_connection_errors
from cronwire_server.storage.tables import remote_workers

# Rows not reported for this long belong to a replica that died: removed.
STALE_AFTER = timedelta(minutes=1)


@dataclass(frozen=True)
class ConnectedWorker:
    session: str
    replica: str
    identity: str
    queues: tuple[str, ...]
    namespaces: tuple[str, ...] | None  # None: every namespace
    free_slots: int
    running: int
    agent: str
    connect_time: datetime | None = None
    report_time: datetime | None = None


def _row(worker: ConnectedWorker) -> dict[str, Any]:
    return {
        "session": worker.session,
        "replica": worker.replica,
        "identity": worker.identity,
        "queues": list(worker.queues),
        "namespaces": None if worker.namespaces is None else list(worker.namespaces),
        "free_slots": worker.free_slots,
        "running": worker.running,
        "agent": worker.agent,
    }


class RemoteRegistry:
    """The remote_workers table over the server's engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    async def report(self, replica: str, workers: list[ConnectedWorker]) -> None:
        """Replace `replica`'s rows with `workers` (keeping the connect times of those known),
        and remove the rows of replicas silent for STALE_AFTER."""
        with unavailable_on_connection_errors():
            async with self._engine.begin() as conn:
                # The database's clock (SQLite is one process: its clock is the database's).
                now: datetime = (
                    (await conn.execute(sa.select(sa.func.now()))).scalar_one()
                    if self._postgres
                    else datetime.now(UTC)
                )
                known = {
                    row.session: row.connect_time
                    for row in await conn.execute(
                        sa.select(remote_workers.c.session, remote_workers.c.connect_time).where(
                            remote_workers.c.replica == replica
                        )
                    )
                }
                await conn.execute(sa.delete(remote_workers).where(remote_workers.c.replica == replica))
                if workers:
                    await conn.execute(
                        sa.insert(remote_workers),
                        [
                            {**_row(w), "connect_time": known.get(w.session) or now, "report_time": now}
                            for w in workers
                        ],
                    )
                # SQLite is one process: its clock is the database's.
                await conn.execute(
                    sa.delete(remote_workers).where(remote_workers.c.report_time < now - STALE_AFTER)
                )

    async def forget(self, replica: str) -> None:
        """The replica stops: its streams are gone."""
        with unavailable_on_connection_errors():
            async with self._engine.begin() as conn:
                await conn.execute(sa.delete(remote_workers).where(remote_workers.c.replica == replica))

    async def connected(self, namespaces: frozenset[str] | None) -> list[ConnectedWorker]:
        """The workers connected, by queue then identity; only those taking work in one of
        `namespaces` (None: all) or in every namespace."""
        with unavailable_on_connection_errors():
            async with self._engine.connect() as conn:
                rows = (await conn.execute(sa.select(remote_workers))).mappings().all()
        found = [
            ConnectedWorker(
                session=row["session"],
                replica=row["replica"],
                identity=row["identity"],
                queues=tuple(row["queues"]),
                namespaces=None if row["namespaces"] is None else tuple(row["namespaces"]),
                free_slots=row["free_slots"],
                running=row["running"],
                agent=row["agent"],
                connect_time=row["connect_time"],
                report_time=row["report_time"],
            )
            for row in rows
        ]
        if namespaces is not None:
            found = [w for w in found if w.namespaces is None or namespaces & set(w.namespaces)]
        return sorted(found, key=lambda w: (w.queues, w.identity, w.session))
