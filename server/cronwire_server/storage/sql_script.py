"""Several PostgreSQL statements in one round trip, for the hot paths that need a lock taken
before a statement's snapshot (the claim's admission, the sequencer's numbering)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import exc
from sqlalchemy.engine import Connection
from sqlalchemy.util import await_only


def run_script(conn: Connection, statements: Sequence[str]) -> tuple[list[str], list[tuple[Any, ...]]]:
    """PostgreSQL: several statements (no parameters) in one round trip, in one transaction, each
    with its own snapshot (the simple query protocol); the column names and rows of the last.
    Sent on the driver directly (SQLAlchemy reads only a first result), reported to the
    engine's statement hooks like any other statement, errors translated as SQLAlchemy does."""
    import psycopg  # PostgreSQL only

    script = ";\n".join(statements)
    for statement in statements:
        conn.dispatch.before_cursor_execute(conn, None, statement, {}, None, False)
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.AsyncConnection)

    async def send() -> tuple[list[str], list[tuple[Any, ...]]]:
        async with driver.cursor() as cursor:
            await cursor.execute(script.encode())  # bytes: no placeholder is looked for
            while cursor.nextset():
                pass
            assert cursor.description is not None
            return [c.name for c in cursor.description], list(await cursor.fetchall())

    try:
        return await_only(send())
    except psycopg.Error as error:
        if driver.broken or driver.closed:
            conn.invalidate(error)
        raise exc.DBAPIError.instance(
            script, None, error, psycopg.Error, connection_invalidated=conn.invalidated
        ) from error
