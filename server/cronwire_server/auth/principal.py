"""Who is calling: set per call by the auth interceptor, read by the services.

The one place namespace visibility is decided. Everything outside the caller's namespaces is
answered as if it did not exist (NOT_FOUND), so a key never learns what other namespaces hold.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from cronwire_server.auth.keys import ApiKey, Role
from cronwire_server.core.errors import NotFound


@dataclass(frozen=True)
class Principal:
    """The caller of the current RPC; `key` None means auth is off (everything is open)."""

    key: ApiKey | None = None

    @property
    def actor(self) -> str:
        """What events record as their author: `keys/<id>`, or "" with auth off."""
        return self.key.name if self.key else ""

    @property
    def role(self) -> Role:
        return self.key.role if self.key else Role.ADMIN

    @property
    def namespaces(self) -> frozenset[str] | None:
        """The namespaces the caller may see; None is every namespace."""
        if self.key is None or self.key.all_namespaces:
            return None
        return frozenset(self.key.namespaces)

    def sees(self, namespace: str) -> bool:
        scope = self.namespaces
        return scope is None or namespace in scope


OPEN = Principal()
_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("cronwire_principal", default=OPEN)


def current() -> Principal:
    return _current.get()


def set_current(principal: Principal) -> None:
    _current.set(principal)


def current_actor() -> str:
    return _current.get().actor


def visible_namespaces() -> frozenset[str] | None:
    """The caller's namespaces, None when it sees every one (for listings over namespaces)."""
    return _current.get().namespaces


def require_namespace(namespace: str, kind: str, name: str) -> None:
    """NotFound for `name` (a resource of `kind` in `namespace`) unless the caller sees it.

    The same error the resource's absence gives: existence outside one's namespaces is no one's
    business.
    """
    if not _current.get().sees(namespace):
        raise NotFound(kind, name)
