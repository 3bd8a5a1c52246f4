"""Prepared statements on a psycopg connection driven at the libpq level, from the event loop.

A primary-key read through psycopg's async cursor costs the server about 300 us of CPU, most of
it the cursor's generators and the event loop's reader added and removed for every wait; the
same read sent here costs about 120 us (and a statement through SQLAlchemy's pooled connections
about 300 us more than here, however little it does). The reads, the plain claims and finishes
and the events' numbering each have a connection of their own (`WireConnection`), so that none
waits behind another kind (a claim behind a numbering's lock, a read behind a claim).

One reader stays registered for the connection's socket and completes the statements in the
order they were sent: libpq runs one at a time, so a statement waits for the one before it. Rows
are loaded by psycopg's own loaders (its `Transformer`), so values come back exactly as its
cursors return them.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
import sqlalchemy as sa
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.conninfo import make_conninfo
from psycopg.types.json import set_json_loads
from sqlalchemy.engine import make_url

from cronwire_server.core.errors import StorageUnavailable
from cronwire_server.storage.sql_engine import json_loads, unavailable

if TYPE_CHECKING:
    from cronwire_server.storage.sql_driver import PreparedStatement

__all__ = ["Fetch", "Wire", "WireConnection"]

T = TypeVar("T")
# A statement of a transaction sent, its rows back (`WireConnection.transaction`).
Fetch = Callable[["PreparedStatement", Mapping[str, Any]], Awaitable[list[dict[str, Any]]]]

# SQLSTATE prefixes of an error after which the server closes the session: connection
# exceptions, and an operator's intervention (a shutdown, pg_terminate_backend, the database
# dropped), not a statement's cancellation (57014).
_CONNECTION_ENDED = ("08", "57P")
# A prepared statement that does not exist (26000), or whose result type changed (0A000).
_PREPARE_AGAIN = ("26000", "0A000")
_RESULTS = pq.Format.BINARY  # the quickest to load; psycopg has binary loaders for every type read


@dataclass
class _Statement:
    """What to send (a prepare or an execution of a prepared statement) and who waits for it."""

    name: bytes
    sql: bytes | None  # set: prepare `sql` as `name`; None: execute `name` with `params`
    params: Sequence[bytes | None]
    done: asyncio.Future[pq.abc.PGresult]
    results: list[pq.abc.PGresult] = field(default_factory=list)


class Wire:
    """`conn` (autocommit, used for nothing else) as a sender of prepared statements.

    `fetch(sql, values)` prepares `sql` (numbered placeholders, `$1`) on first use, sends it with
    `values` dumped as text (the types come from the statement's casts) and returns its column
    type OIDs and rows as tuples. A statement's error raises psycopg's error for it; a lost
    connection raises OperationalError to every statement sent or waiting, and `broken` is then
    true for good: the owner makes a new one.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn
        self._pgconn = conn.pgconn
        self._pgconn.nonblocking = 1
        self._socket = self._pgconn.socket
        self._loop = asyncio.get_running_loop()
        self._tx = Transformer(conn)
        self._prepared: dict[bytes, bytes] = {}  # sql -> the name it is prepared as
        self._names = itertools.count()
        self._waiting: deque[_Statement] = deque()  # the first is in flight once sent
        self._in_flight = False
        self._writing = False
        self._error: psycopg.OperationalError | None = None
        self._loop.add_reader(self._socket, self._readable)

    @property
    def broken(self) -> bool:
        return self._error is not None

    async def fetch(self, sql: bytes, values: Sequence[Any]) -> tuple[list[int], list[tuple[Any, ...]]]:
        try:
            res = await self._execute(sql, values)
        except psycopg.Error as error:
            if error.sqlstate not in _PREPARE_AGAIN:
                raise
            # Its statement is gone or stale (a pooler's reset, a migration that changed a
            # column's type): prepared again once. It failed before it ran, so it changed nothing.
            self._forget(sql)
            res = await self._execute(sql, values)
        tx = self._tx
        tx.set_pgresult(res)
        return [res.ftype(i) for i in range(res.nfields)], tx.load_rows(0, res.ntuples, tuple)

    async def _execute(self, sql: bytes, values: Sequence[Any]) -> pq.abc.PGresult:
        preparing = None
        name = self._prepared.get(sql)
        if name is None:
            name = self._prepared[sql] = b"cw_wire_%d" % next(self._names)
            preparing = self._send(_Statement(name, sql, (), self._loop.create_future()))
        params = self._tx.dump_sequence(values, [PyFormat.TEXT] * len(values)) if values else []
        statement = _Statement(
            name, None, [None if p is None else bytes(p) for p in params], self._loop.create_future()
        )
        result = self._send(statement)
        if preparing is not None:
            try:
                await preparing
            except Exception:
                result.cancel()  # it would only fail the same way
                self._forget(sql, name)
                raise
        return await result

    def _forget(self, sql: bytes, name: bytes | None = None) -> None:
        """Prepare `sql` again at its next use (under a new name: the old one may still exist)."""
        if name is None or self._prepared.get(sql) == name:
            self._prepared.pop(sql, None)

    async def close(self) -> None:
        self._stop(psycopg.OperationalError("the connection was closed"))
        await self._conn.close()

    def _send(self, statement: _Statement) -> asyncio.Future[pq.abc.PGresult]:
        if self._error is not None:
            raise self._error
        # Marked seen: a caller that went away leaves no "exception never retrieved" behind.
        statement.done.add_done_callback(_seen)
        self._waiting.append(statement)
        if not self._in_flight:
            self._send_next()
        return statement.done

    def _send_next(self) -> None:
        while self._waiting and not self._in_flight and self._error is None:
            statement = self._waiting[0]
            if statement.done.cancelled() and statement.sql is None:
                self._waiting.popleft()  # its caller went away before it was sent
                continue
            try:
                if statement.sql is not None:
                    self._pgconn.send_prepare(statement.name, statement.sql)
                else:
                    self._pgconn.send_query_prepared(statement.name, statement.params, result_format=_RESULTS)
                self._in_flight = True
                self._flush()
            except psycopg.OperationalError as error:
                self._stop(error)

    def _flush(self) -> None:
        pending = self._pgconn.flush()  # 1: the socket took only part of it
        if pending and not self._writing:
            self._loop.add_writer(self._socket, self._writable)
            self._writing = True
        elif not pending and self._writing:
            self._loop.remove_writer(self._socket)
            self._writing = False

    def _writable(self) -> None:
        try:
            self._flush()
        except psycopg.OperationalError as error:
            self._stop(error)

    def _readable(self) -> None:
        pgconn = self._pgconn
        try:
            pgconn.consume_input()
            while self._in_flight and not pgconn.is_busy():
                result = pgconn.get_result()
                statement = self._waiting[0]
                if result is not None:
                    statement.results.append(result)
                    continue
                self._waiting.popleft()
                self._in_flight = False
                self._complete(statement)
                self._send_next()
        except psycopg.OperationalError as error:
            self._stop(error)
            return
        if pgconn.status == pq.ConnStatus.BAD:
            self._stop(psycopg.OperationalError(pgconn.get_error_message() or "the connection was lost"))

    def _complete(self, statement: _Statement) -> None:
        failed = next((r for r in statement.results if r.status == pq.ExecStatus.FATAL_ERROR), None)
        if failed is None:
            if not statement.done.done():
                statement.done.set_result(statement.results[-1])
            return
        error = psycopg.errors.error_from_result(failed, self._conn.info.encoding)
        if not statement.done.done():
            statement.done.set_exception(error)
        if isinstance(error, psycopg.OperationalError) and (error.sqlstate or "").startswith(
            _CONNECTION_ENDED
        ):
            self._stop(error)  # the server ends the session (a shutdown, a terminated backend)

    def _stop(self, error: psycopg.OperationalError) -> None:
        """Fail what was sent or waits, for good; the connection is of no more use."""
        if self._error is None:
            self._error = error
            self._loop.remove_reader(self._socket)
            if self._writing:
                self._loop.remove_writer(self._socket)
                self._writing = False
        while self._waiting:
            done = self._waiting.popleft().done
            if not done.done():
                done.set_exception(error)
        self._in_flight = False


def _seen(done: asyncio.Future[Any]) -> None:
    if not done.cancelled():
        done.exception()


class WireConnection:
    """A PostgreSQL connection of one kind of statement's own (autocommit, each statement its own
    transaction), sent to at the libpq level from the event loop (`Wire`). Statements in flight
    together share it: they go one after the other. A broken connection is replaced at the next
    statement. With `resend` (statements that change nothing, or nothing twice), a statement that
    finds the connection it had broken is sent once more on a new one; without, it fails with
    StorageUnavailable, as one that cannot reach the database does, and its caller (which may not
    know whether it committed) decides. The engine's statement hooks see each statement, as they
    see the store's other statements. `options` are the session's settings (libpq `options`)."""

    def __init__(self, url: str, engine: sa.Engine, *, resend: bool, options: str = "") -> None:
        self._conninfo = make_conninfo(
            make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
            application_name="cronwire",
            **({"options": options} if options else {}),
        )
        self._engine = engine
        self._resend = resend
        self._wire: Wire | None = None  # made at the first statement
        self._connecting = asyncio.Lock()
        self._transacting = asyncio.Lock()  # one transaction at a time (`transaction`)

    async def fetch(self, statement: PreparedStatement, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        self._engine.dispatch.before_cursor_execute(None, None, statement.sql, params, None, False)
        return await self._on_a_connection(lambda wire: statement.fetch_on(wire, params), self._resend)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Fetch]:
        """BEGIN ... COMMIT, yielding the fetch of its statements. For a connection that only
        holds transactions, one at a time (a statement sent by `fetch` meanwhile would join the
        open one). Never sent again: a broken connection fails it with StorageUnavailable (a
        COMMIT whose answer was lost may have committed; the caller decides); any other error,
        or the caller going away, rolls it back."""
        async with self._transacting:
            wire = await self._begun()
            try:
                yield functools.partial(self._in_transaction, wire)
                await self._control(wire, "COMMIT")
            except BaseException:
                await self._roll_back(wire)
                raise

    async def _begun(self) -> Wire:
        """The connection, a transaction begun on it. One found broken by the BEGIN (the server
        restarted, or ended the idle session) is replaced once: nothing was sent in it yet."""

        async def begin(wire: Wire) -> Wire:
            self._engine.dispatch.before_cursor_execute(None, None, "BEGIN", {}, None, False)
            await wire.fetch(b"BEGIN", ())
            return wire

        return await self._on_a_connection(begin, True)

    async def _on_a_connection(self, send: Callable[[Wire], Awaitable[T]], resend: bool) -> T:
        """`send(wire)` on the connection. If it finds the connection broken, StorageUnavailable;
        with `resend`, unless the connection was new, it is sent once more on a new one."""
        while True:
            wire, fresh = await self._connection()
            try:
                return await self._unresent(wire, send(wire))
            except StorageUnavailable:
                if fresh or not resend:
                    raise

    async def _in_transaction(
        self, wire: Wire, statement: PreparedStatement, params: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        self._engine.dispatch.before_cursor_execute(None, None, statement.sql, params, None, False)
        return await self._unresent(wire, statement.fetch_on(wire, params))

    async def _control(self, wire: Wire, sql: str) -> None:
        self._engine.dispatch.before_cursor_execute(None, None, sql, {}, None, False)
        await self._unresent(wire, wire.fetch(sql.encode(), ()))

    async def _unresent(self, wire: Wire, sent: Awaitable[T]) -> T:
        """What `sent` (on `wire`) returns; StorageUnavailable, the connection discarded, if it
        found the connection broken (not sent again)."""
        try:
            return await sent
        except psycopg.OperationalError as error:
            if not wire.broken:
                raise  # the statement failed, not the connection
            await self._discard(wire)
            raise unavailable(type(error).__name__) from error

    async def _roll_back(self, wire: Wire) -> None:
        """End a failed transaction: ROLLBACK, or, if that cannot be sent, the connection closed
        (which ends it too)."""
        if not wire.broken:
            try:
                await wire.fetch(b"ROLLBACK", ())
                return
            except (psycopg.Error, asyncio.CancelledError):
                pass
        await self._discard(wire)

    async def _connection(self) -> tuple[Wire, bool]:
        """The connection, and whether it was made for this statement."""
        wire = self._wire
        if wire is not None and not wire.broken:
            return wire, False  # the usual case, without the lock
        async with self._connecting:
            if self._wire is not None and not self._wire.broken:
                return self._wire, False
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            except psycopg.Error as error:
                raise unavailable(type(error).__name__) from error
            set_json_loads(json_loads, conn)  # as the engine's connections read JSON
            self._wire = Wire(conn)
            return self._wire, True

    async def _discard(self, wire: Wire) -> None:
        if self._wire is wire:
            self._wire = None
        await wire.close()

    async def close(self) -> None:
        if self._wire is not None:
            await self._discard(self._wire)
