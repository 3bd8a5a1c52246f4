"""API keys: the model, the token format, and the digest that is all the database keeps.

A token reads `cwk_<id>_<secret>`: the id finds the row, the secret (32 random bytes) is
compared by its SHA-256 digest in constant time. A random 256-bit secret cannot be guessed,
so a slow password hash would add nothing but CPU per call.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from cronwire_server.core.names import key_name

TOKEN_PREFIX = "cwk"
ALL_NAMESPACES = "*"
# Executor kinds: "*" is every kind. A key made without a list gets the default, whatever its
# role: shell and python run code on the workers, so they are granted by name only.
ALL_EXECUTORS = "*"
DEFAULT_EXECUTORS = ("http", "noop")
# Queues of a worker key: "*" is every queue.
ALL_QUEUES = "*"
ID_HEX_DIGITS = 12
SECRET_BYTES = 32


class Role(enum.IntEnum):
    """What a key may do; each of viewer, editor and admin includes the ones below it. WORKER
    stands apart (`may`): it opens WorkerService streams and nothing else, and no other role
    opens them."""

    VIEWER = 1  # read and watch
    EDITOR = 2  # also create, change, delete, run, cancel, backfill
    ADMIN = 3  # also manage API keys
    WORKER = 4  # runs remote work (WorkerService), and nothing else

    def may(self, needed: Role) -> bool:
        """Whether a key of this role may call what needs `needed`."""
        if self is Role.WORKER or needed is Role.WORKER:
            return self is needed
        return self >= needed

    @classmethod
    def parse(cls, value: str) -> Role:
        """`viewer` / `VIEWER` -> Role.VIEWER; ValueError naming the choices otherwise."""
        try:
            return cls[value.strip().upper()]
        except KeyError:
            choices = ", ".join(r.name.lower() for r in cls)
            raise ValueError(f"{value!r} is not a role: one of {choices}") from None


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    id: str
    role: Role
    # The namespaces it may see; ("*",) is every namespace.
    namespaces: tuple[str, ...]
    description: str = ""
    create_time: datetime | None = None
    revoke_time: datetime | None = None
    # The executor kinds it may create or change jobs with; ("*",) is every kind.
    executors: tuple[str, ...] = DEFAULT_EXECUTORS
    # Role WORKER: the queues its workers may take work from; ("*",) is every queue.
    queues: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return key_name(self.id)

    @property
    def all_namespaces(self) -> bool:
        return ALL_NAMESPACES in self.namespaces

    def covers(self, namespaces: Iterable[str]) -> bool:
        """Whether every one of `namespaces` is within this key's."""
        return self.all_namespaces or set(namespaces) <= set(self.namespaces)

    def may_use(self, executor: str) -> bool:
        """Whether jobs of executor kind `executor` may be created or changed with this key."""
        return ALL_EXECUTORS in self.executors or executor in self.executors

    def serves(self, queues: Iterable[str]) -> bool:
        """Whether a worker with this key may take work from every one of `queues`."""
        return self.role is Role.WORKER and (ALL_QUEUES in self.queues or set(queues) <= set(self.queues))

    def grants(self, executors: Iterable[str]) -> bool:
        """Whether every one of `executors` is within this key's."""
        return ALL_EXECUTORS in self.executors or set(executors) <= set(self.executors)


@dataclass(frozen=True)
class Token:
    """A presented token, split into its parts."""

    key_id: str
    secret: str


def new_key_id() -> str:
    return secrets.token_hex(ID_HEX_DIGITS // 2)


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def format_token(key_id: str, secret: str) -> str:
    return f"{TOKEN_PREFIX}_{key_id}_{secret}"


def parse_token(value: str) -> Token | None:
    """The parts of `cwk_<id>_<secret>`, or None if `value` is not of that form."""
    prefix, _, rest = value.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != TOKEN_PREFIX or len(key_id) != ID_HEX_DIGITS or not secret:
        return None
    if any(c not in "0123456789abcdef" for c in key_id):
        return None
    return Token(key_id, secret)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(secret), stored_digest)
