"""The store's database engine: URLs, the engine and its per-connection settings, the count of
statements sent, and the translation of driver errors into domain errors.

The lowest of the SQL storage modules: every other one (the store, the aggregates' modules,
notifications, keys, migrations) takes its engine, its clock and its error handling from here,
and this module imports none of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.engine.interfaces import ExecuteStyle
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from cronwire_server.core import errors

SQLITE_BUSY_TIMEOUT_MS = 30_000

# Connection.info key of the events a transaction writes just before it commits.
PENDING_EVENTS = "cronwire_pending_events"

# ---------------------------------------------------------------------------
# URLs


def _backend(url: URL) -> str:
    backend = url.get_backend_name()
    if backend == "sqlite":
        return "sqlite"
    if backend in ("postgresql", "postgres"):
        return "postgresql"
    raise ValueError(f"unsupported database {backend!r}: use sqlite:///FILE or postgresql://...")


def _with_driver(url: str, drivers: dict[str, str]) -> str:
    parsed = make_url(url)
    backend = _backend(parsed)
    return parsed.set(drivername=drivers[backend]).render_as_string(hide_password=False)


def normalize_url(url: str) -> str:
    """The async SQLAlchemy URL for a user's database URL.

    `sqlite:///x.db` -> `sqlite+aiosqlite:///x.db`; `postgres://` and
    `postgresql://` (any driver) -> `postgresql+psycopg://`.
    """
    return _with_driver(url, {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"})


def sync_url(url: str) -> str:
    """The blocking-driver SQLAlchemy URL for the same database (used by migrations)."""
    return _with_driver(url, {"sqlite": "sqlite+pysqlite", "postgresql": "postgresql+psycopg"})


# ---------------------------------------------------------------------------
# Engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # busy_timeout first: switching to WAL needs a lock another connection may hold.
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    # WAL: readers never block the writer, and commits are cheaper.
    cursor.execute("PRAGMA journal_mode=WAL")
    # Off by default in SQLite, per connection; the schedules -> jobs cascade needs it.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class SqlSent:
    """What this process sent to its databases, counted by a statement hook on every store engine
    (several stores in one process add up, like the metrics): `statements`, and `round_trips`,
    which add the BEGIN/COMMIT/ROLLBACK the store sends itself on its autocommit engine. An
    executemany is as many statements as parameter sets in one round trip (psycopg pipelines
    them); a multi-row INSERT (insertmanyvalues) is one statement."""

    def __init__(self) -> None:
        self.statements = 0
        self.round_trips = 0

    def __call__(
        self, _conn: Any, _cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        self.round_trips += 1
        if executemany and context is not None and context.execute_style is ExecuteStyle.EXECUTEMANY:
            self.statements += len(parameters)
        elif statement[:8].upper() not in _TRANSACTION_CONTROL:
            self.statements += 1


_TRANSACTION_CONTROL = frozenset({"BEGIN", "BEGIN IM", "COMMIT", "ROLLBACK"})
SQL_SENT = SqlSent()


def create_engine(url: str, *, pool_size: int = 20, max_overflow: int = 0) -> AsyncEngine:
    """An async engine for a user's database URL, set up for the store."""
    async_url = normalize_url(url)
    parsed = make_url(async_url)
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        # Each pooled connection (and the migration) would see its own empty database.
        raise ValueError("in-memory SQLite is not supported: give a file, sqlite:///cronwire.db")
    engine = create_async_engine(async_url, **engine_options(parsed, pool_size, max_overflow))
    instrument(engine.sync_engine)
    return engine


# The claims' and remote takes' sessions never plan a bitmap scan. A claim must read the queue in
# due order through its partial index and stop at its batch however many are queued; but with the
# queue's estimates far off (no statistics yet on a new database, or taken while it was empty) a
# bitmap scan of the whole queue and a sort cost the planner about what the ordered index scan does
# (24.78 against 24.77 for 2,000 queued), and a growing index tips it: measured in a 3,000-run
# burst, every claim after the first six read the 1,500-2,400 still queued to take 16. Without
# bitmap scans the ordered index scan is left against a sequential scan that the planner costs with
# every row's filter, so it wins whatever the estimates. Index scans are pinned on so that no
# server or database setting takes it away. (Sequential scans stay allowed: the claim's row lookups
# then keep their primary keys; with them off too, missing statistics had them use other indexes.)
QUEUE_SESSION_OPTIONS = "-c enable_bitmapscan=off -c enable_indexscan=on"

# The plain finishes' session keeps one plan per finish statement: the statement reads no table
# itself (its rows are locked and ended by address in `cronwire_end_executions`, migration 0031),
# so no plan made while a table was nearly empty can read too much later. Planned at every call,
# as it was while it joined its rows by primary key, a finish cost PostgreSQL 0.36 ms of planning
# (paced at 1,000 runs a second, about a tenth of its time per run).
FINISH_SESSION_OPTIONS = "-c plan_cache_mode=force_generic_plan"


def create_queue_engine(engine: AsyncEngine, pool_size: int = 2) -> AsyncEngine:
    """PostgreSQL: a small engine on `engine`'s database for the statements that take work from
    the queue, with `QUEUE_SESSION_OPTIONS`. What it sends is counted, and seen by hooks, as the
    store's engine's."""
    url = engine.url
    queue = create_async_engine(url, **engine_options(url, pool_size, 0, options=QUEUE_SESSION_OPTIONS))
    store = engine.sync_engine

    def forward(*args: Any) -> None:
        store.dispatch.before_cursor_execute(*args)

    sa.event.listen(queue.sync_engine, "before_cursor_execute", forward)
    return queue


# The empty documents, most of a row's JSON (arguments, labels, dependents, calendars): made
# without a parse.
_EMPTY_DOCUMENTS: dict[bytes | str, type[dict[str, Any]] | type[list[Any]]] = {
    b"{}": dict,
    b"[]": list,
    "{}": dict,
    "[]": list,
}
_DECODE = json.JSONDecoder().decode


def json_loads(data: bytes | str) -> Any:
    """A JSON document the driver read (PostgreSQL's are UTF-8 bytes), as `json.loads` makes it:
    about a microsecond less for an empty object or list (a tenth of the time) and half a one
    for any other sent as bytes (decoded first: `json.loads` would detect its encoding). Every
    row read carries several, and the hot paths read a row per run."""
    if len(data) == 2 and (empty := _EMPTY_DOCUMENTS.get(data)) is not None:
        return empty()
    return _DECODE(data.decode() if isinstance(data, bytes) else data)


def engine_options(url: URL, pool_size: int, max_overflow: int, **connect_args: Any) -> dict[str, Any]:
    """Options of every engine on the store's database; `connect_args` go to PostgreSQL's driver."""
    options: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": max_overflow,
        # Autocommit: most calls are one statement, which then costs one round trip, not three.
        "isolation_level": "AUTOCOMMIT",
        # Never in logs or error messages: parameters carry job documents and secrets.
        "hide_parameters": True,
        "json_deserializer": json_loads,
    }
    if url.get_backend_name() != "sqlite":
        options["connect_args"] = {"application_name": "cronwire", **connect_args}
    return options


def instrument(engine: sa.Engine) -> None:
    """SQLite's per-connection settings, and the statement count every engine of the store keeps."""
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_on_connect)
    sa.event.listen(engine, "before_cursor_execute", SQL_SENT)


# ---------------------------------------------------------------------------
# Errors


@contextmanager
def unavailable_on_connection_errors() -> Iterator[None]:
    """Turn "cannot talk to the database" into the retryable domain error."""
    try:
        yield
    except exc.DBAPIError as error:
        # OperationalError covers refused connections, shutdowns, locked SQLite files.
        # The message reaches API callers: the driver's text (hosts, ports) stays in the cause.
        if error.connection_invalidated or isinstance(error, exc.OperationalError | exc.InterfaceError):
            raise unavailable(type(error.orig).__name__) from error
        raise
    except exc.PendingRollbackError as error:
        # A connection invalidated mid-transaction refuses every use until rolled back: the
        # connection was lost, not the statement wrong.
        raise unavailable("connection lost") from error
    except (exc.TimeoutError, OSError) as error:  # pool exhausted, socket errors
        raise unavailable(type(error).__name__) from error


def unavailable(reason: str) -> errors.StorageUnavailable:
    """The retryable domain error for a database that cannot be reached. Its message reaches API
    callers: the driver's text (hosts, ports) stays in the cause, `reason` names only its kind."""
    return errors.StorageUnavailable(f"the database is unavailable ({reason})")


def violated(error: exc.IntegrityError) -> str:
    """Which constraint kind an insert or update broke: "unique", "foreign_key" or "other"."""
    sqlstate = getattr(error.orig, "sqlstate", None)  # psycopg
    if sqlstate is not None:
        return {"23505": "unique", "23503": "foreign_key"}.get(sqlstate, "other")
    name = getattr(error.orig, "sqlite_errorname", "")
    if name in ("SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE"):
        return "unique"
    return "foreign_key" if name == "SQLITE_CONSTRAINT_FOREIGNKEY" else "other"


def rollback(conn: Connection) -> None:
    """Best effort, and never in place of the error that led here: if the connection broke, the
    pool discards it and the server has rolled back already."""
    if conn.invalidated:
        conn.rollback()  # only resets SQLAlchemy's state; nothing is sent
        return
    conn.info.pop(PENDING_EVENTS, None)
    with suppress(exc.SQLAlchemyError):
        conn.exec_driver_sql("ROLLBACK")


# ---------------------------------------------------------------------------
# The database's clock


def database_now(conn: Connection) -> datetime:
    """The database's clock: every replica decides by the same time."""
    if conn.dialect.name == "postgresql":
        value = conn.exec_driver_sql("SELECT clock_timestamp()").scalar_one()
        assert isinstance(value, datetime)
        return value
    return datetime.now(UTC)


def notify(conn: Connection, channel: str) -> None:
    """NOTIFY every replica when this transaction commits (PostgreSQL; a no-op elsewhere)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"NOTIFY cronwire_{channel}")


def stamp_time(postgres: bool) -> Any:
    """What a write stores as "now": on PostgreSQL the database's now() inside the statement, so
    no replica's own clock reaches a stored time (now() is one instant for a whole transaction:
    a row, its event and its request id agree). SQLite is one process: its clock is the database's.
    """
    return _DB_NOW if postgres else datetime.now(UTC)


_DB_NOW = sa.func.now()
