"""Remote work, as the storage and the dispatcher of remote workers speak of it.

Every stream of a worker (a session) has a secret of its own; each execution it takes is leased
under a token made of that secret and a random part, sent to the worker only. The execution's
`worker` column holds the worker's identity and a digest of the session's secret: every existing
lease path (renewal, finish, release, recovery) fences a stale holder by comparing `worker`, the
results of one session are finished in one statement, no one reading the execution learns a
token, and a worker that reconnects proves with a token that the lease is its own. Within a
session, the dispatcher tells one take of an execution from another by the whole token.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import timedelta

from cronwire_server.storage.base import ClaimedExecution

SECRET_BYTES = 24
TOKEN_RANDOM_BYTES = 12
DIGEST_HEX_DIGITS = 16


def new_session_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def new_lease_token(secret: str) -> str:
    """A lease token of the session with `secret`: `<secret>.<random>`."""
    return f"{secret}.{secrets.token_urlsafe(TOKEN_RANDOM_BYTES)}"


def secret_of(token: str) -> str:
    """The session secret a lease token was made with ("" for a token not of that form)."""
    secret, dot, rest = token.partition(".")
    return secret if dot and secret and rest else ""


def session_worker(identity: str, secret: str) -> str:
    """The `worker` of the executions a session of `identity` with `secret` holds."""
    digest = hashlib.sha256(secret.encode()).hexdigest()[:DIGEST_HEX_DIGITS]
    return f"{identity} session:{digest}"


@dataclass(frozen=True)
class RemoteTake:
    """What a worker may be given: QUEUED remote executions of `queues` (and, if `tasks` is not
    empty, of those tasks or of jobs naming none), in `namespaces` (None: every namespace), at
    most `limit`, each leased to the session (`worker`, its tokens made with `secret`) for
    `lease`."""

    worker: str
    secret: str
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


@dataclass(frozen=True)
class RemoteTaken:
    """What one take started: for each `RemoteTake` given, in order, its claims; and whether the
    queue may hold more for them than they were given (a worker that got all the room it asked
    for, or more candidates than were looked at), so room that comes free is worth a take."""

    claims: list[list[RemoteClaim]] = field(default_factory=list)
    more: bool = False
