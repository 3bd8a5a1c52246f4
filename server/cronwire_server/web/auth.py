"""Who uses the dashboard: the API's keys and roles, a key entered once and kept in a cookie.

The cookie holds the key itself (HttpOnly, SameSite=Strict, Secure when served over TLS), so
every request is checked like a gRPC call: a revoked key stops working within the key-cache
period, on every replica, without sessions to share. Each state change carries a CSRF token,
an HMAC of the cookie under the database's shared secret: a page of another site can neither
read it nor send the cookie (SameSite=Strict).

Whether a key is needed follows the gRPC listener's rules (auth.mode) for both addresses: off
with --insecure; on loopback without --require-auth or TLS, open until the database has a key;
otherwise always.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace

from cronwire_server.auth.cache import KeyCache
from cronwire_server.auth.interceptor import UNAUTHENTICATED, KeysExist
from cronwire_server.auth.keys import ApiKey, Role, parse_token, secret_matches
from cronwire_server.auth.mode import auth_interceptor
from cronwire_server.auth.principal import OPEN, Principal
from cronwire_server.auth.ratelimit import RateLimiter
from cronwire_server.auth.roles import required_role
from cronwire_server.config import Settings, is_loopback_address
from cronwire_server.core.errors import PermissionDenied, RateLimited, Unauthenticated
from cronwire_server.storage.sql_keys import KeyStore

COOKIE = "cronwire_session"
# An open dashboard's cookie: no key, only what its CSRF token is made from.
ANONYMOUS_PREFIX = "anon_"
CSRF_CONTEXT = b"cronwire dashboard csrf\x00"
# Longest cookie value accepted; a key token is far shorter.
MAX_COOKIE_CHARS = 512


@dataclass(frozen=True)
class Visitor:
    """Who is asking: `principal` as the API sees it, and the cookie value their CSRF token binds."""

    principal: Principal
    session: str

    @property
    def role(self) -> Role:
        return self.principal.role

    def may(self, method: str) -> bool:
        """Whether this visitor may do what gRPC `method` does."""
        needed = required_role(method)
        return needed is not None and self.principal.role.may(needed)


class WebAuth:
    """Checks the session cookie of every dashboard request, as the gRPC interceptor checks keys."""

    def __init__(
        self,
        keys: KeyCache | None,
        secret: bytes,
        *,
        open_until_keys: KeysExist | None = None,
        limiter: RateLimiter | None = None,
        failures: RateLimiter | None = None,
        secure: bool = False,
    ) -> None:
        self._keys = keys
        self._secret = hashlib.sha256(CSRF_CONTEXT + secret).digest()
        self._open_until_keys = open_until_keys
        self._limiter = limiter or RateLimiter(0, 1)
        self._failures = failures or RateLimiter(0, 1)
        self.secure = secure

    @property
    def enabled(self) -> bool:
        return self._keys is not None

    async def needs_key(self) -> bool:
        """Whether a request without a valid key is refused now."""
        if self._keys is None:
            return False
        if self._open_until_keys is not None:
            return await self._open_until_keys()
        return True

    async def visitor(self, cookie: str, peer: str) -> Visitor | None:
        """The visitor of a request with session cookie `cookie`; None when it needs to log in.
        RateLimited when the key is over its rate, or the peer over its failures."""
        cookie = cookie[:MAX_COOKIE_CHARS]
        if not await self.needs_key():
            return Visitor(OPEN, cookie) if cookie else None
        if not cookie or cookie.startswith(ANONYMOUS_PREFIX):
            return None
        try:
            key = await self.authenticate(cookie, peer)
        except (Unauthenticated, PermissionDenied):
            return None
        wait = self._limiter.acquire(key.id)
        if wait > 0:
            raise RateLimited(f"key {key.name} is over its rate limit; retry in {wait:.2f}s", wait)
        return Visitor(Principal(key), cookie)

    async def authenticate(self, token_text: str, peer: str) -> ApiKey:
        """The valid, unrevoked key `token_text` is; Unauthenticated otherwise (counted against
        `peer`, which is paced like gRPC callers: RateLimited past its failures)."""
        wait = self._failures.wait(peer)
        if wait > 0:
            raise RateLimited(f"too many failed logins from this address; retry in {wait:.2f}s", wait)
        assert self._keys is not None
        token = parse_token(token_text.strip())
        found = await self._keys.lookup(token.key_id) if token else None
        if (
            token is None
            or found is None
            or found.key.revoke_time is not None
            or not secret_matches(token.secret, found.secret_sha256)
        ):
            self._failures.acquire(peer)
            raise Unauthenticated(UNAUTHENTICATED)
        if found.key.role is Role.WORKER:
            # Worker keys run remote work and nothing else (Role.may): no dashboard either.
            self._failures.acquire(peer)
            raise PermissionDenied("a worker key cannot use the dashboard")
        return found.key

    async def still_valid(self, visitor: Visitor) -> bool:
        """Whether the key of an open stream still holds (revocation ends the stream)."""
        key = visitor.principal.key
        if key is None or self._keys is None:
            return not await self.needs_key()
        found = await self._keys.lookup(key.id)
        return found is not None and found.key.revoke_time is None

    def key_created(self) -> None:
        if self._open_until_keys is not None:
            self._open_until_keys.forget()

    def csrf_token(self, session: str) -> str:
        return hmac.new(self._secret, session.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: str, token: str) -> bool:
        return bool(session) and hmac.compare_digest(self.csrf_token(session), token)

    @staticmethod
    def new_anonymous_session() -> str:
        return ANONYMOUS_PREFIX + secrets.token_urlsafe(24)


async def web_auth(
    settings: Settings, address: str, keys: KeyStore, secret: bytes, *, grpc_auth: bool
) -> WebAuth:
    """The dashboard's auth for a listener at `address`: on when the gRPC rules say so for the
    gRPC listener (`grpc_auth`) or for this address (AuthRefused when they refuse to start)."""
    web_side = grpc_auth
    if is_loopback_address(address) != is_loopback_address(settings.listen):
        web_side = await auth_interceptor(replace(settings, listen=address), keys) is not None
    secure = bool(settings.tls_cert)
    if settings.insecure or not (grpc_auth or web_side):
        return WebAuth(None, secret, secure=secure)
    lenient = (
        is_loopback_address(settings.listen)
        and is_loopback_address(address)
        and not settings.require_auth
        and not settings.tls_cert
    )
    return WebAuth(
        KeyCache(keys, settings.key_cache_seconds),
        secret,
        open_until_keys=KeysExist(keys.any_created, settings.key_cache_seconds) if lenient else None,
        limiter=RateLimiter(settings.rate_limit_per_key, settings.rate_limit_burst),
        failures=RateLimiter(settings.auth_failures_per_peer, settings.auth_failure_burst),
        secure=secure,
    )
