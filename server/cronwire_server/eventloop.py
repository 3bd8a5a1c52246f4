"""The event loop a server process runs on: uvloop where it is installed, else asyncio's own.

grpc.aio does its I/O on gRPC core's poller thread and only hands completions to the
loop, so what the loop costs is its scheduling: callbacks, futures, the psycopg socket
waits. uvloop does that in C; measured on the API benchmark it takes about a quarter
off the server CPU of a bare gRPC call and about a tenth off a GetJob.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# "auto": uvloop if importable (it is not on Windows, nor on some interpreters), else asyncio.
EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: str = "auto") -> str:
    """The loop `choice` means here: "uvloop" or "asyncio". ValueError if it cannot be had."""
    if choice not in EVENT_LOOPS:
        raise ValueError(f"unknown event loop {choice!r}: choose one of {', '.join(EVENT_LOOPS)}")
    if choice == "auto":
        return "uvloop" if uvloop_available() else "asyncio"
    if choice == "uvloop" and not uvloop_available():
        raise ValueError("event loop uvloop is not installed: pip install uvloop, or choose asyncio")
    return choice


def loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What `asyncio.Runner(loop_factory=...)` needs for `choice`; None is asyncio's default."""
    if resolve(choice) == "asyncio":
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """`asyncio.run(main)` on the loop `choice` names (a Runner, so no global policy is changed)."""
    try:
        factory = loop_factory(choice)
    except ValueError:
        main.close()  # never awaited: close it so Python does not warn about it
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
