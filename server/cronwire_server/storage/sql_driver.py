"""Hot PostgreSQL statements sent on the driver (psycopg) directly, past SQLAlchemy's execution
machinery: several statements in one round trip (the claim's admission, which needs a lock taken
before a statement's snapshot), and statements built once and sent prepared on connections of
their own (`sql_wire`): primary-key reads (GetJob and the like, see `sql_reads`), plain claims
and finishes, and the events' numbering, whose per-call cost is otherwise mostly SQLAlchemy's.
All are reported to the engine's statement hooks like any other statement."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.util import await_only

if TYPE_CHECKING:
    from cronwire_server.storage.sql_wire import Wire

T = TypeVar("T")


def json_document(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as the one JSON parameter of a batch statement (`jsonb_to_recordset`; times are ISO
    8601, and None is JSON null: NULL in a column of any type but jsonb, which reads it with
    `NULLIF(column, 'null')`). psycopg dumps an array parameter element by element in Python;
    this is one C call, a fraction of the server's CPU for the same rows."""
    return _ENCODER.encode(rows)


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} in a JSON document of rows")


# Made once: `json.dumps` with options makes an encoder at every call (about a microsecond).
_ENCODER = json.JSONEncoder(default=_iso, ensure_ascii=False, allow_nan=False)


def _on_driver(conn: Connection, sql: str, send: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    """`send(driver)` on the psycopg connection under `conn`, errors translated."""
    import psycopg  # PostgreSQL only

    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.AsyncConnection)
    try:
        return await_only(send(driver))
    except psycopg.Error as error:
        if driver.broken or driver.closed:
            conn.invalidate(error)
        raise exc.DBAPIError.instance(
            sql, None, error, psycopg.Error, connection_invalidated=conn.invalidated
        ) from error


def run_script(conn: Connection, statements: Sequence[str]) -> tuple[list[str], list[tuple[Any, ...]]]:
    """PostgreSQL: several statements (no parameters) in one round trip, in one transaction, each
    with its own snapshot (the simple query protocol); the column names and rows of the last
    (SQLAlchemy reads only a first result)."""
    script = ";\n".join(statements)
    for statement in statements:
        conn.dispatch.before_cursor_execute(conn, None, statement, {}, None, False)

    async def send(driver: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
        async with driver.cursor() as cursor:
            await cursor.execute(script.encode())  # bytes: no placeholder is looked for
            while cursor.nextset():
                pass
            assert cursor.description is not None
            return [c.name for c in cursor.description], list(await cursor.fetchall())

    return _on_driver(conn, script, send)


class PreparedStatement:
    """A statement with typed result columns (a SELECT, or a textual statement given its
    `.columns()`) compiled once for `dialect` (PostgreSQL), sent prepared on a `sql_wire.Wire`;
    its rows come back as SQLAlchemy would map them (column keys, result types applied: the
    processors are made once, at the first call, from the types the database reports)."""

    def __init__(self, statement: sa.Select[Any] | sa.TextualSelect, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)  # as the statement hooks and logs show it
        # The same with numbered placeholders, as the wire sends it, and their names in order.
        numbered = statement.compile(dialect=cast(Any, type(dialect))(paramstyle="numeric_dollar"))
        self._wire_sql = str(numbered).encode()
        self._names = list(numbered.positiontup or ())
        self._literals = dict(compiled.params)  # the values bound in the statement itself
        self._dialect = dialect
        self._columns = [
            (str(column.key), column.type.dialect_impl(dialect)) for column in statement.selected_columns
        ]
        self._processors: list[tuple[str, Callable[[Any], Any] | None]] | None = None

    async def fetch_on(self, wire: Wire, given: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every row, read on `wire`. The caller reports the statement and translates errors."""
        params = {**self._literals, **given}
        types, rows = await wire.fetch(self._wire_sql, [params[name] for name in self._names])
        return self._mapped(types, rows)

    def _mapped(self, types: list[int], rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        if self._processors is None:
            self._processors = [
                (key, impl.result_processor(self._dialect, type_code))
                for (key, impl), type_code in zip(self._columns, types, strict=True)
            ]
        processors = self._processors
        return [
            {
                key: (process(value) if process is not None and value is not None else value)
                for (key, process), value in zip(processors, row, strict=True)
            }
            for row in rows
        ]
