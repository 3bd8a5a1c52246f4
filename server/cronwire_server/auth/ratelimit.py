"""Per-key request rates and per-address failed authentications: a token bucket per key (or
address), in this replica's memory."""

from __future__ import annotations

import time
from dataclasses import dataclass

# Past this many keys or addresses tracked, those with a full bucket are forgotten.
MAX_BUCKETS = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`rate` requests per second per key on average, up to `burst` at once; rate 0 is unlimited.

    Each replica counts on its own: behind a balancer over N replicas a key gets up to N times
    the rate.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, key: str) -> _Bucket:
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                # Many addresses or keys at once: forget the full ones, whose state is the default.
                self._buckets = {k: b for k, b in self._buckets.items() if self._refill(b, now) < self.burst}
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        self._refill(bucket, now)
        return bucket

    def _refill(self, bucket: _Bucket, now: float) -> float:
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        return bucket.tokens

    def wait(self, key: str) -> float:
        """The seconds until `key` may take one again, without taking it (0.0: it may now)."""
        if self.rate <= 0:
            return 0.0
        bucket = self._bucket(key)
        return 0.0 if bucket.tokens >= 1 else (1 - bucket.tokens) / self.rate

    def acquire(self, key_id: str) -> float:
        """Take one request for `key_id`: 0.0 if allowed, else the seconds until one would be."""
        if self.rate <= 0:
            return 0.0
        bucket = self._bucket(key_id)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate
