"""Key management, shared by KeyService and `cronwire-server keys`: validation and scope rules."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from cronwire_server.auth.keys import (
    ALL_EXECUTORS,
    ALL_NAMESPACES,
    ALL_QUEUES,
    DEFAULT_EXECUTORS,
    ApiKey,
    Role,
    digest,
    format_token,
    new_key_id,
    new_secret,
)
from cronwire_server.auth.principal import Principal
from cronwire_server.core.errors import FieldViolation, InvalidArgument, NotFound, PermissionDenied
from cronwire_server.core.model import Listing, Page
from cronwire_server.core.names import check_id
from cronwire_server.executors.kinds import QUEUE_NAME_PATTERN
from cronwire_server.executors.registry import KINDS
from cronwire_server.storage.sql_keys import KeyStore

log = logging.getLogger(__name__)

MAX_DESCRIPTION = 2048


def validate_key(namespaces: Sequence[str], description: str) -> tuple[str, ...]:
    """The namespaces, deduplicated in order; InvalidArgument naming each bad field."""
    violations: list[FieldViolation] = []
    if not namespaces:
        violations.append(FieldViolation("namespaces", f"name at least one namespace, or {ALL_NAMESPACES!r}"))
    for index, namespace in enumerate(namespaces):
        if namespace != ALL_NAMESPACES:
            try:
                check_id(namespace, f"namespaces[{index}]")
            except InvalidArgument as error:
                violations.extend(error.violations)
    if len(description) > MAX_DESCRIPTION:
        violations.append(FieldViolation("description", f"must be at most {MAX_DESCRIPTION} characters"))
    if violations:
        raise InvalidArgument(violations)
    unique = tuple(dict.fromkeys(namespaces))
    return (ALL_NAMESPACES,) if ALL_NAMESPACES in unique else unique


def validate_queues(role: Role, queues: Sequence[str]) -> tuple[str, ...]:
    """The queues of a worker key, deduplicated in order; InvalidArgument naming each bad one,
    none for a worker key, or any for a key of another role."""
    if role is not Role.WORKER:
        if queues:
            raise InvalidArgument.field("queues", "only keys of role worker take work from queues")
        return ()
    if not queues:
        raise InvalidArgument.field("queues", f"a worker key needs at least one queue, or {ALL_QUEUES!r}")
    pattern = re.compile(QUEUE_NAME_PATTERN)
    violations = [
        FieldViolation(
            f"queues[{index}]",
            f"{queue[:80]!r} is not a queue name: a letter or digit, then letters, digits, '.', '_' or '-'",
        )
        for index, queue in enumerate(queues)
        if queue != ALL_QUEUES and not pattern.match(queue)
    ]
    if violations:
        raise InvalidArgument(violations)
    unique = tuple(dict.fromkeys(queues))
    return (ALL_QUEUES,) if ALL_QUEUES in unique else unique


def validate_executors(executors: Sequence[str]) -> tuple[str, ...]:
    """The executor kinds, deduplicated in order (none given: the default, http and noop);
    InvalidArgument naming each unknown one."""
    if not executors:
        return DEFAULT_EXECUTORS
    known = ", ".join(sorted(KINDS))
    violations = [
        FieldViolation(
            f"executors[{index}]", f"unknown executor kind {kind!r}; one of {known}, or {ALL_EXECUTORS!r}"
        )
        for index, kind in enumerate(executors)
        if kind != ALL_EXECUTORS and kind not in KINDS
    ]
    if violations:
        raise InvalidArgument(violations)
    unique = tuple(dict.fromkeys(executors))
    return (ALL_EXECUTORS,) if ALL_EXECUTORS in unique else unique


class KeyManager:
    """Key operations on behalf of a caller: an admin key limited to namespaces manages only keys
    within them, and grants at most its own role and its own executor kinds."""

    def __init__(self, store: KeyStore) -> None:
        self._store = store

    async def create(
        self,
        role: Role,
        namespaces: Sequence[str],
        description: str,
        *,
        caller: Principal,
        executors: Sequence[str] = (),
        queues: Sequence[str] = (),
    ) -> tuple[ApiKey, str]:
        """The stored key and its token (the only time the secret exists outside the caller).

        `executors`: the executor kinds the key may create and change jobs with; none given is
        the default (http, noop), whatever the role."""
        scope = validate_key(namespaces, description)
        kinds = validate_executors(executors)
        scoped_queues = validate_queues(role, queues)
        if caller.key is not None:
            # A worker key is made by an admin (it stands apart from the other roles).
            if not caller.key.role.may(Role.ADMIN if role is Role.WORKER else role):
                raise PermissionDenied(
                    f"key {caller.key.name} has role {caller.key.role.name.lower()} and cannot create "
                    f"a key with role {role.name.lower()}"
                )
            if not caller.key.covers(scope):
                raise PermissionDenied(
                    f"key {caller.key.name} can create keys only within its namespaces: "
                    + ", ".join(caller.key.namespaces)
                )
            if not caller.key.grants(kinds):
                raise PermissionDenied(
                    f"key {caller.key.name} can grant only its own executor kinds: "
                    + ", ".join(caller.key.executors)
                )
        key_id, secret = new_key_id(), new_secret()
        key = await self._store.create(
            ApiKey(key_id, role, scope, description, executors=kinds, queues=scoped_queues), digest(secret)
        )
        # Keys have no events: the log is their audit trail.
        log.info(
            "key %s created (role %s, namespaces %s) by %s, with executor kinds %s",
            key.name,
            role.name.lower(),
            ",".join(scope),
            _who(caller),
            ",".join(kinds),
        )
        return key, format_token(key_id, secret)

    async def get(self, key_id: str, *, caller: Principal) -> ApiKey:
        key = await self._store.get(key_id)
        if not _manages(caller, key):
            raise NotFound("key", key.name)
        return key

    async def list_page(self, page: Page, *, caller: Principal) -> Listing[ApiKey]:
        """Up to `page.size` keys the caller may manage. Others are skipped over, and the cursor
        is always the id of a key the caller sees, so a page token reveals nothing beyond it."""
        found: list[ApiKey] = []
        after = page.after
        while True:
            listing = await self._store.list_page(Page(size=page.size, after=after))
            for key in listing.items:
                if _manages(caller, key):
                    found.append(key)
                    if len(found) == page.size:
                        # More follow if this was not the last key of the last page.
                        last = key is listing.items[-1] and listing.next_after is None
                        return Listing(found, None if last else key.id)
            if listing.next_after is None:
                return Listing(found, None)
            after = listing.next_after

    async def revoke(self, key_id: str, *, caller: Principal) -> ApiKey:
        await self.get(key_id, caller=caller)
        key = await self._store.revoke(key_id)
        log.info("key %s revoked by %s", key.name, _who(caller))
        return key


def _who(caller: Principal) -> str:
    return caller.actor or "a caller without a key (auth off, or the keys command)"


def _manages(caller: Principal, key: ApiKey) -> bool:
    return caller.key is None or caller.key.covers(key.namespaces)
