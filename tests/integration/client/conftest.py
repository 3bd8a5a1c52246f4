"""Real servers for the SDK and CLI tests.

The sync client blocks its thread, so for sync tests (and the CLI, which is sync) the
in-process server runs on an event loop of its own in a background thread. Async tests run
the server on the test's own loop, as tests/integration/api does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

import cronwire
from cronwire_server.app import RunningServer, create_server
from cronwire_server.config import Settings

START_TIMEOUT = 60.0


class ThreadedServer:
    """An in-process cronwire server on its own event loop, in a background thread."""

    def __init__(self, database_url: str, **settings: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cronwire-server", daemon=True)
        self._thread.start()
        # Jobs run as the tests' user, root or not: they use the tests' private directories.
        configured = Settings(
            listen="127.0.0.1:0", database_url=database_url, allow_root_jobs=True, **settings
        )
        self._running: RunningServer = asyncio.run_coroutine_threadsafe(
            create_server(configured), self._loop
        ).result(START_TIMEOUT)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self._running.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._running.stop(grace=0), self._loop).result(START_TIMEOUT)

        async def cancel_rest() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_rest(), self._loop).result(START_TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_TIMEOUT)
        self._loop.close()


@pytest.fixture
def sqlite_url(fresh_database_url: Callable[[str], str]) -> str:
    """A new migrated SQLite database (most client tests do not depend on the backend)."""
    return fresh_database_url("sqlite")


@pytest.fixture
def server_target(sqlite_url: str) -> Iterator[str]:
    """The address of a server on SQLite, running in a background thread."""
    server = ThreadedServer(sqlite_url)
    yield server.target
    server.stop()


@pytest.fixture
def backend_target(database_url: str) -> Iterator[str]:
    """The address of a server on each database backend in turn, in a background thread."""
    server = ThreadedServer(database_url)
    yield server.target
    server.stop()


@pytest.fixture
def client(server_target: str) -> Iterator[cronwire.Client]:
    with cronwire.Client(server_target, namespace="test") as connected:
        yield connected


@pytest.fixture
async def aio_server(database_url: str) -> AsyncIterator[RunningServer]:
    """An in-process server on the test's own event loop, on each backend."""
    settings = Settings(listen="127.0.0.1:0", database_url=database_url, allow_root_jobs=True)
    running = await create_server(settings)
    yield running
    await running.stop(grace=0)


@pytest.fixture
async def aio_client(aio_server: RunningServer) -> AsyncIterator[cronwire.AsyncClient]:
    async with cronwire.AsyncClient(f"127.0.0.1:{aio_server.port}", namespace="test") as connected:
        yield connected
