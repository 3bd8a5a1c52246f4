"""Primary-key reads that arrive together, sent as one statement (PostgreSQL).

Services read jobs and executions on their request paths, many at once. Each read alone costs a
round trip: a send and a wake-up of the event loop for the answer. Reads of one statement that
arrive while another is in flight wait for it and then go together, as one prepared
`WHERE (namespace, id) IN (SELECT unnest(...), unnest(...))`; a lone read goes at once, as the
plain primary-key read, so nothing waits on a timer. They are sent on a connection of their own
(`ReadConnection`), from the event loop itself at the libpq level (`sql_wire`): no pool checkout,
no greenlet and no cursor per read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect, make_url

from cronwire_server.core import errors
from cronwire_server.storage.sql_creates import GroupCommit
from cronwire_server.storage.sql_driver import PreparedRead

if TYPE_CHECKING:
    from cronwire_server.storage.sql_wire import Wire

__all__ = ["BatchedKeyReads", "ReadConnection"]

Row = dict[str, Any]

# The keys of a batch, unnested in step (PostgreSQL zips the two arrays).
_KEYS = sa.select(
    sa.func.unnest(sa.bindparam("namespaces", type_=postgresql.ARRAY(sa.Text))),
    sa.func.unnest(sa.bindparam("ids", type_=postgresql.ARRAY(sa.Text))),
)


@dataclass(frozen=True)
class _Key:
    namespace: str
    id: str

    def claims(self) -> list[tuple[str, str, str]]:
        return []  # reads never exclude each other from a batch


class BatchedKeyReads:
    """Reads of `select` (rows of `table`, no WHERE yet) by (namespace, id). `fetch(read, params)`
    runs a prepared read on a pooled connection and returns its rows."""

    def __init__(
        self,
        select: sa.Select[Any],
        table: sa.Table,
        dialect: Dialect,
        fetch: Callable[[PreparedRead, dict[str, Any]], Awaitable[list[Row]]],
    ) -> None:
        self._one = PreparedRead(
            select.where(table.c.namespace == sa.bindparam("namespace"), table.c.id == sa.bindparam("id")),
            dialect,
        )
        self._many = PreparedRead(select.where(sa.tuple_(table.c.namespace, table.c.id).in_(_KEYS)), dialect)
        self._fetch = fetch
        self._group: GroupCommit[_Key, Row | None] = GroupCommit(self._read, lead=True)

    async def read(self, namespace: str, id: str) -> Row | None:
        return await self._group.submit(_Key(namespace, id))

    @property
    def pending(self) -> int:
        """Reads submitted and not answered yet (waiting, or in the statement in flight)."""
        return self._group.pending

    async def _read(self, keys: list[_Key]) -> Sequence[Row | None]:
        if len(keys) == 1:
            rows = await self._fetch(self._one, {"namespace": keys[0].namespace, "id": keys[0].id})
            return [rows[0] if rows else None]
        params = {"namespaces": [k.namespace for k in keys], "ids": [k.id for k in keys]}
        found = {(row["namespace"], row["id"]): row for row in await self._fetch(self._many, params)}
        return [found.get((k.namespace, k.id)) for k in keys]


class ReadConnection:
    """A PostgreSQL connection of the reads' own, sent to at the libpq level from the event loop
    (`sql_wire.Wire`). Batches of different statements in flight together share it: they go one
    after the other. A broken connection is replaced at the next read, and a read that finds the
    connection it had broken is tried once more on a new one (a read changes nothing); a read
    that cannot reach the database raises StorageUnavailable, as the store's other calls do. The
    engine's statement hooks see each read, as they see the store's other statements."""

    def __init__(self, url: str, engine: sa.Engine) -> None:
        self._conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._engine = engine
        self._wire: Wire | None = None  # made at the first read
        self._connecting = asyncio.Lock()

    async def fetch(self, read: PreparedRead, params: Mapping[str, Any]) -> list[Row]:
        import psycopg  # PostgreSQL only

        self._engine.dispatch.before_cursor_execute(None, None, read.sql, params, None, False)
        while True:
            wire, fresh = await self._connection()
            try:
                return await read.fetch_on(wire, params)
            except psycopg.OperationalError as error:
                if not wire.broken:
                    raise  # the statement failed, not the connection
                await self._discard(wire)
                if fresh:
                    raise _unavailable(error) from error

    async def _connection(self) -> tuple[Wire, bool]:
        """The connection, and whether it was made for this read."""
        import psycopg

        from cronwire_server.storage.sql_wire import Wire

        wire = self._wire
        if wire is not None and not wire.broken:
            return wire, False  # the usual case, without the lock
        async with self._connecting:
            if self._wire is not None and not self._wire.broken:
                return self._wire, False
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, application_name="cronwire"
                )
            except psycopg.Error as error:
                raise _unavailable(error) from error
            self._wire = Wire(conn)
            return self._wire, True

    async def _discard(self, wire: Wire) -> None:
        if self._wire is wire:
            self._wire = None
        await wire.close()

    async def close(self) -> None:
        if self._wire is not None:
            await self._discard(self._wire)


def _unavailable(error: Exception) -> errors.StorageUnavailable:
    # The driver's text (hosts, ports) stays in the cause, as for the store's other calls.
    return errors.StorageUnavailable(f"the database is unavailable ({type(error).__name__})")
