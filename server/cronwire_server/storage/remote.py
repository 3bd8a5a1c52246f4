"""Remote work, as the storage and the dispatcher of remote workers speak of it.

A remote execution is leased to one claim of one worker: the lease token (random, sent to the
worker only) names the claim. The execution's `worker` column holds the worker's identity and a
digest of the token, so every existing lease path (renewal, finish, release, recovery) fences a
stale claim by comparing `worker`, and no one reading the execution learns the token.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from cronwire_server.storage.base import ClaimedExecution

TOKEN_BYTES = 24
DIGEST_HEX_DIGITS = 16


def new_lease_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def lease_worker(identity: str, token: str) -> str:
    """The `worker` of an execution `identity` holds under lease `token`."""
    digest = hashlib.sha256(token.encode()).hexdigest()[:DIGEST_HEX_DIGITS]
    return f"{identity} lease:{digest}"


@dataclass(frozen=True)
class RemoteTake:
    """What a worker may be given: QUEUED remote executions of `queues` (and, if `tasks` is not
    empty, of those tasks or of jobs naming none), in `namespaces` (None: every namespace), at
    most `limit`, each leased to `identity` for `lease`."""

    identity: str
    queues: tuple[str, ...]
    tasks: tuple[str, ...]
    namespaces: tuple[str, ...] | None
    limit: int
    lease: timedelta


@dataclass(frozen=True)
class RemoteClaim:
    """An execution taken for a remote worker, with the lease token it holds it under."""

    claimed: ClaimedExecution
    token: str

    @property
    def worker(self) -> str:
        return self.claimed.execution.worker


@dataclass(frozen=True)
class HeldRemoteLease:
    """A lease a remote worker says it holds: the execution's key and the lease's `worker`."""

    namespace: str
    execution_id: str
    worker: str
