"""API keys as the SDK shows them (KeyService): who may call, in which namespaces, with what role."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cronwire._convert import NamedIntEnum, time_from
from cronwire.v1 import key_pb2, key_service_pb2


class Role(NamedIntEnum):
    """What a key may do; each of viewer, editor and admin includes the ones before it; worker
    stands apart."""

    VIEWER = key_pb2.ROLE_VIEWER  # read and watch
    EDITOR = key_pb2.ROLE_EDITOR  # also create, change, delete, run, cancel, backfill
    ADMIN = key_pb2.ROLE_ADMIN  # also manage keys
    WORKER = key_pb2.ROLE_WORKER  # take remote work of its queues (cronwire.Worker), nothing else


@dataclass
class Key:
    """An API key (never its secret). `namespaces` ["*"] is every namespace; `executors`, the
    executor kinds it may create and change jobs with, ["*"] every kind."""

    name: str
    role: Role
    namespaces: list[str] = field(default_factory=list)
    description: str = ""
    create_time: datetime | None = None
    revoke_time: datetime | None = None
    executors: list[str] = field(default_factory=list)
    # Role worker: the queues its workers take work from, ["*"] every queue.
    queues: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.name.removeprefix("keys/")

    @property
    def revoked(self) -> bool:
        return self.revoke_time is not None

    @classmethod
    def _from_proto(cls, message: key_pb2.Key) -> Key:
        return cls(
            name=message.name,
            role=Role(message.role),
            namespaces=list(message.namespaces),
            description=message.description,
            create_time=time_from(message, "create_time"),
            revoke_time=time_from(message, "revoke_time"),
            executors=list(message.executors),
            queues=list(message.queues),
        )


@dataclass
class CreatedKey:
    """A new key and its token, `cwk_<id>_<secret>`: the only time the token is shown."""

    key: Key
    token: str


def key_name(key: str | Key) -> str:
    """`keys/<id>` for an id, a name or a Key."""
    if isinstance(key, Key):
        return key.name
    return key if key.startswith("keys/") else f"keys/{key}"


def create_request(
    namespaces: Sequence[str],
    role: Role | str,
    description: str,
    executors: Sequence[str] = (),
    queues: Sequence[str] = (),
) -> key_service_pb2.CreateKeyRequest:
    parsed = role if isinstance(role, Role) else Role[role.upper()]
    key = key_pb2.Key(
        namespaces=list(namespaces),
        role=parsed.value,
        description=description,
        executors=list(executors),
        queues=list(queues),
    )
    return key_service_pb2.CreateKeyRequest(key=key)
