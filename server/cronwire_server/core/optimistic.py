"""Read-modify-write under optimistic concurrency (AIP-154 etags)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from cronwire_server.core.errors import EtagMismatch


class Versioned(Protocol):
    etag: str


V = TypeVar("V", bound=Versioned)

# Without a caller etag, a write that loses a race is simply redone on the new version.
ATTEMPTS = 5


async def read_modify_write(
    read: Callable[[], Awaitable[V]],
    write: Callable[[V, str], Awaitable[V]],
    change: Callable[[V], V],
    *,
    kind: str,
    name: str,
    expected_etag: str = "",
    verify: Callable[[V], Awaitable[None]] | None = None,
) -> V:
    """Apply `change` to the current version and store it if nobody wrote in between.

    With `expected_etag` the caller's read must be current (EtagMismatch if
    not); without it a lost race is retried a few times. `verify` may check the changed
    version against other stored state before it is written.
    """
    for _ in range(ATTEMPTS):
        current = await read()
        if expected_etag and current.etag != expected_etag:
            raise EtagMismatch(kind, name)
        changed = change(current)
        if verify is not None:
            await verify(changed)
        try:
            return await write(changed, current.etag)
        except EtagMismatch:
            if expected_etag:
                raise
    raise EtagMismatch(kind, name)
