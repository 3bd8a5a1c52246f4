"""The event loop a server process runs on: uvloop where it is safe and installed, else asyncio's.

grpc.aio does its I/O on gRPC core's poller thread and only hands completions to the
loop, so what the loop costs is its scheduling: callbacks, futures, the psycopg socket
waits. uvloop does that in C; on the API benchmark it takes about a quarter off the
server CPU of a bare gRPC call and about a tenth off a GetJob.

Not in a process with the worker role, though: uvloop spawns subprocesses through
libuv, which truncates an argument or variable at a NUL byte where asyncio (like
subprocess) refuses it, and does not say whether a missing working directory or a
missing program made the spawn fail. The executors rely on both, so `auto` keeps
asyncio there and an explicit `uvloop` is refused.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Collection, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# "auto": uvloop if importable (it is not on Windows) and the process spawns no executors.
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
ALL_ROLES = frozenset({"api", "dispatcher", "worker"})
# Roles that start executor subprocesses, whose semantics differ on uvloop.
SUBPROCESS_ROLES = frozenset({"worker"})


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: str = "auto", roles: Collection[str] = ALL_ROLES) -> str:
    """The loop `choice` means for a process with `roles`: "uvloop" or "asyncio".

    ValueError if `choice` is unknown or cannot be had.
    """
    if choice not in EVENT_LOOPS:
        raise ValueError(f"unknown event loop {choice!r}: choose one of {', '.join(EVENT_LOOPS)}")
    spawns = sorted(SUBPROCESS_ROLES.intersection(roles))
    if choice == "auto":
        return "uvloop" if uvloop_available() and not spawns else "asyncio"
    if choice == "uvloop":
        if spawns:
            raise ValueError(
                f"event loop uvloop is not supported with the {', '.join(spawns)} role: its subprocesses "
                "truncate arguments at NUL bytes; run that role on asyncio"
            )
        if not uvloop_available():
            raise ValueError("event loop uvloop is not installed: pip install uvloop, or choose asyncio")
    return choice


def loop_factory(
    choice: str = "auto", roles: Collection[str] = ALL_ROLES
) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What `asyncio.Runner(loop_factory=...)` needs; None is asyncio's default loop."""
    if resolve(choice, roles) == "asyncio":
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], choice: str = "auto", roles: Collection[str] = ALL_ROLES) -> T:
    """`asyncio.run(main)` on the loop `choice` means for `roles` (no global policy is changed)."""
    try:
        factory = loop_factory(choice, roles)
    except ValueError:
        main.close()  # never awaited: close it so Python does not warn about it
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
