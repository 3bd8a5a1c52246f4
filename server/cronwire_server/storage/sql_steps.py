"""A transaction's statements as steps: the logic that decides each statement from the rows of
the one before is written once, as a generator of (statement, parameters) that receives each
statement's rows, and a driver sends them: through SQLAlchemy on an open transaction (`run`,
either database) or prepared on a PostgreSQL wire connection's transaction (`run_on`,
`sql_wire.WireConnection.transaction`). A generator's return value is the driver's.

Steps meant for the wire send PostgreSQL statements that take one set of parameters (a JSON
document or arrays for many rows) and declare their result columns (a SELECT, or a textual
statement with `.columns()`): they are prepared once and sent as they are."""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from cronwire_server.storage.sql_driver import PreparedStatement
    from cronwire_server.storage.sql_wire import Fetch

__all__ = ["Step", "Steps", "run", "run_on"]

T = TypeVar("T")
# One statement and its parameters (a list of them: one execution per item, SQLite's many-row
# writes); what it returns comes back as the rows' mappings.
Step = tuple[sa.Executable, Mapping[str, Any] | list[dict[str, Any]]]
Steps = Generator[Step, list[Mapping[str, Any]], T]


def run(conn: Connection, steps: Steps[T]) -> T:
    """Send the statements of `steps` on `conn` (in its open transaction), each one's rows back
    to it; what it returns."""
    rows: list[Mapping[str, Any]] | None = None
    while True:
        try:
            statement, params = steps.send(rows)  # type: ignore[arg-type]  # None starts it
        except StopIteration as done:
            return cast(T, done.value)
        result = conn.execute(statement, params)
        rows = cast(list[Mapping[str, Any]], list(result.mappings())) if result.returns_rows else []


async def run_on(fetch: Fetch, prepare: Callable[[Any], PreparedStatement], steps: Steps[T]) -> T:
    """PostgreSQL: send the statements of `steps` prepared (`prepare`) by `fetch`, in the
    transaction it belongs to; what it returns."""
    rows: list[dict[str, Any]] | None = None
    while True:
        try:
            statement, params = steps.send(rows)  # type: ignore[arg-type]  # None starts it
        except StopIteration as done:
            return cast(T, done.value)
        assert not isinstance(params, list), "a step for the wire has one set of parameters"
        rows = await fetch(prepare(statement), params)
