"""API keys in SQL: one row per key, the secret kept only as its SHA-256 digest."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from cronwire_server.auth.keys import ApiKey, Role
from cronwire_server.core import errors
from cronwire_server.core.model import Listing, Page
from cronwire_server.core.names import key_name
from cronwire_server.storage.sql_engine import stamp_time, unavailable_on_connection_errors
from cronwire_server.storage.tables import api_keys, server_secrets

PAGE_TOKEN_SECRET = "page_token_hmac"


@dataclass(frozen=True)
class StoredKey:
    """A key with the digest of its secret, for checking a presented token."""

    key: ApiKey
    secret_sha256: str


def _key(row: Mapping[Any, Any]) -> ApiKey:
    return ApiKey(
        id=row["id"],
        role=Role[row["role"]],
        namespaces=tuple(row["namespaces"]),
        description=row["description"],
        create_time=row["create_time"],
        revoke_time=row["revoke_time"],
        executors=tuple(row["executors"]),
        queues=tuple(row["queues"]),
    )


def _not_found(key_id: str) -> errors.NotFound:
    return errors.NotFound("key", key_name(key_id))


class KeyStore:
    """The api_keys table over the server's engine (each call one autocommitted statement)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    async def _execute(self, statement: sa.Executable) -> sa.CursorResult[Any]:
        with unavailable_on_connection_errors():
            async with self._engine.connect() as conn:
                return await conn.execute(statement)

    async def create(self, key: ApiKey, secret_sha256: str) -> ApiKey:
        result = await self._execute(
            sa.insert(api_keys)
            .values(
                id=key.id,
                description=key.description,
                namespaces=list(key.namespaces),
                role=key.role.name,
                executors=list(key.executors),
                queues=list(key.queues),
                secret_sha256=secret_sha256,
                create_time=stamp_time(self._postgres),
            )
            .returning(api_keys.c.create_time)
        )
        return ApiKey(
            id=key.id,
            role=key.role,
            namespaces=key.namespaces,
            description=key.description,
            create_time=result.scalar_one(),
            executors=key.executors,
            queues=key.queues,
        )

    async def lookup(self, key_id: str) -> StoredKey | None:
        """The key and its digest, revoked or not; None if there is no such key."""
        result = await self._execute(sa.select(api_keys).where(api_keys.c.id == key_id))
        row = result.mappings().one_or_none()
        return None if row is None else StoredKey(_key(row), row["secret_sha256"])

    async def get(self, key_id: str) -> ApiKey:
        found = await self.lookup(key_id)
        if found is None:
            raise _not_found(key_id)
        return found.key

    async def list_page(self, page: Page) -> Listing[ApiKey]:
        """Keys in id order after `page.after`, revoked ones included."""
        query = sa.select(api_keys)
        if page.after:
            query = query.where(api_keys.c.id > page.after)
        result = await self._execute(query.order_by(api_keys.c.id).limit(page.size + 1))
        keys = [_key(row) for row in result.mappings().all()]
        if len(keys) <= page.size:
            return Listing(items=keys, next_after=None)
        return Listing(items=keys[: page.size], next_after=keys[page.size - 1].id)

    async def revoke(self, key_id: str) -> ApiKey:
        """Revoke the key (a revoked key stays revoked, with its first revoke time)."""
        await self._execute(
            sa.update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoke_time.is_(None))
            .values(revoke_time=stamp_time(self._postgres))
        )
        return await self.get(key_id)

    async def any_created(self) -> bool:
        """Whether a key was ever created here, revoked ones included."""
        result = await self._execute(sa.select(api_keys.c.id).limit(1))
        return result.first() is not None

    async def any_active(self) -> bool:
        """Whether at least one key is not revoked."""
        result = await self._execute(
            sa.select(api_keys.c.id).where(api_keys.c.revoke_time.is_(None)).limit(1)
        )
        return result.first() is not None

    async def shared_secret(self, name: str = PAGE_TOKEN_SECRET) -> bytes:
        """The secret `name`, the same for every replica on this database: made by the first
        that asks (a racing replica's insert does nothing), read by all."""
        insert = (postgresql.insert if self._postgres else sqlite.insert)(server_secrets)
        with unavailable_on_connection_errors():
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert.values(name=name, value=secrets.token_hex(32)).on_conflict_do_nothing()
                )
                value = (
                    await conn.execute(sa.select(server_secrets.c.value).where(server_secrets.c.name == name))
                ).scalar_one()
        return bytes.fromhex(value)
