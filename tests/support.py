"""Helpers shared by the tests: real server processes, error details, and the one way to wait —
polling a condition with a deadline (`wait_for`, and `eventually` in async tests)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

import grpc
import sqlalchemy as sa
from google.rpc import error_details_pb2, status_pb2

from cronwire_server.executors.runners import Runners
from cronwire_server.storage.tables import metadata
from cronwire_server.supervisor import MAIN, Supervisor
from cronwire_server.workers import WorkerPool

T = TypeVar("T")
# The repository's root, for tests that read its files (deploy/, examples/, scripts/).
REPO = Path(__file__).resolve().parents[1]

STARTUP_DEADLINE = 30.0


def wait_for(condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll `condition` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@overload
async def eventually(
    check: Callable[[], Awaitable[T | None]], within: float, what: str, interval: float = 0.02
) -> T: ...
@overload
async def eventually(
    check: Callable[[], T | None], within: float, what: str, interval: float = 0.02
) -> T: ...
async def eventually(
    check: Callable[[], Any],
    within: float,
    what: str,
    interval: float = 0.02,
) -> T:
    """`wait_for` for async tests: poll `check` (plain or async) without blocking the event loop
    (servers under test may run on it) until it returns something truthy; fail after `within` s."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


def rows_read(conn: Any, table: str) -> int:
    """Rows of `table` (PostgreSQL) that the statements of `conn`'s open transaction have read, by
    sequential and by index scans: what a plan really cost, whatever its estimates."""
    return int(
        conn.execute(
            sa.text(
                "SELECT pg_stat_get_xact_tuples_returned(CAST(:t AS regclass))"
                " + pg_stat_get_xact_tuples_fetched(CAST(:t AS regclass))"
            ),
            {"t": table},
        ).scalar_one()
    )


@contextlib.contextmanager
def statements_sent(store: Any) -> Iterator[list[str]]:
    """The SQL statements `store` (a SqlStore) sends while the block runs, in order."""
    sent: list[str] = []

    def hook(*args: Any) -> None:
        sent.append(args[2])

    engine = store.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", hook)
    try:
        yield sent
    finally:
        sa.event.remove(engine, "before_cursor_execute", hook)


@contextlib.asynccontextmanager
async def running_pool(
    store: Any, slots: int, runners: Runners | None = None, grace: float = 5, **options: Any
) -> AsyncIterator[WorkerPool]:
    """A worker pool on `store` (with `options` for WorkerPool) with its loops running, stopped as
    the server stops it (its runs given `grace` seconds to end)."""
    stopping = asyncio.Event()
    supervisor = Supervisor(stopping)
    pool = WorkerPool(store, slots=slots, runners=runners, **options)
    pool.start(supervisor, stopping)
    try:
        yield pool
    finally:
        stopping.set()
        await supervisor.stop([MAIN], within=5)
        await pool.drain(grace)
        await supervisor.stop(within=0)  # the loops that run until cancelled


class RefusingFinishes:
    """A store's `finish_executions` that writes nothing until `open` is set (`asked` is set once
    a batch waits for it), records the size of each batch it is asked to write (`sizes`), and
    refuses (ValueError, as the database refusing a value would) every batch holding the execution
    `refused`, if given (only while its outcome is one `refuses` picks, if given), until
    `refusing` is cleared."""

    def __init__(
        self, store: Any, refused: str | None = None, refuses: Callable[[Any], bool] | None = None
    ) -> None:
        self._finish = store.finish_executions
        self._refused = refused
        self._refuses = refuses or (lambda outcome: True)
        self.open = asyncio.Event()
        self.asked = asyncio.Event()
        self.refusing = True
        self.sizes: list[int] = []

    async def __call__(self, items: Any, *args: Any, **kwargs: Any) -> Any:
        self.asked.set()
        await self.open.wait()
        self.sizes.append(len(items))
        if self.refusing and any(
            claimed.execution.id == self._refused and self._refuses(outcome) for claimed, outcome in items
        ):
            raise ValueError("refused")
        return await self._finish(items, *args, **kwargs)


@dataclass
class ServerProcess:
    """A `cronwire-server` running as its own process, as a user would start it."""

    process: subprocess.Popen[str]
    port: int
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text()


def start_server(
    database_url: str, workdir: Path, *extra: str, env: Mapping[str, str] | None = None
) -> ServerProcess:
    """Start `python -m cronwire_server` on a free port and wait until it reports its port.

    `env` adds to (or overrides) the environment the server inherits from the tests. The HTTP
    listener is off unless `extra` asks for it: its default port would be shared by every test."""
    if not any(flag.startswith(("--http-address", "--metrics-address")) for flag in extra):
        extra = ("--http-address=", *extra)
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / f"port-{time.monotonic_ns()}"
    log_path = workdir / f"server-{time.monotonic_ns()}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cronwire_server",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                database_url,
                "--port-file",
                str(port_file),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            text=True,
        )

    def port() -> int | None:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        return int(port_file.read_text()) if port_file.exists() else None

    return ServerProcess(process, wait_for(port, STARTUP_DEADLINE, "the server's port file"), log_path)


def status_details(error: grpc.RpcError) -> tuple[dict[str, str], str]:
    """The BadRequest field violations ({field: description}) and ErrorInfo reason of an error."""
    metadata = error.trailing_metadata() or ()  # type: ignore[attr-defined]
    raw = next((value for key, value in metadata if key == "grpc-status-details-bin"), None)
    if raw is None:
        return {}, ""
    status = status_pb2.Status.FromString(raw)
    violations: dict[str, str] = {}
    reason = ""
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.update({v.field: v.description for v in bad.field_violations})
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
    return violations, reason


async def store_value(store: Any, table: str, column: str, value: Any, where: str) -> None:
    """Write `value` into `column` of the rows of `table` matching the SQL `where`, past the API's
    checks: what job code (or an older server) could have stored."""
    json_column = isinstance(metadata.tables[table].c[column].type, sa.JSON)
    cast = "CAST(:value AS jsonb)" if json_column and store.engine.dialect.name == "postgresql" else ":value"
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.text(f"UPDATE {table} SET {column} = {cast} WHERE {where}"),
            {"value": json.dumps(value) if json_column else value},
        )
