"""Keys read from the database are kept a few seconds, so calls do not each cost a query.

The price is the revocation delay: a revoked key keeps working on a replica until its entry
there expires (`--key-cache-seconds`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from cronwire_server.storage.sql_keys import KeyStore, StoredKey

# Unknown ids are cached too; a flood of made-up ids just empties the cache now and then.
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class _Entry:
    found: StoredKey | None
    read_at: float


class KeyCache:
    def __init__(self, store: KeyStore, ttl: float) -> None:
        self._store = store
        self.ttl = ttl
        self._entries: dict[str, _Entry] = {}

    async def lookup(self, key_id: str) -> StoredKey | None:
        now = time.monotonic()
        entry = self._entries.get(key_id)
        if entry is not None and now - entry.read_at < self.ttl:
            return entry.found
        found = await self._store.lookup(key_id)
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key_id] = _Entry(found, now)
        return found
