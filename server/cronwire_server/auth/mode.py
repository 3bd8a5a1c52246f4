"""When auth is on: beyond loopback always (unless --insecure); on loopback with --require-auth,
with TLS, or as soon as the database has a key."""

from __future__ import annotations

import logging

from cronwire_server.auth.cache import KeyCache
from cronwire_server.auth.interceptor import AuthInterceptor, KeysExist
from cronwire_server.auth.ratelimit import RateLimiter
from cronwire_server.config import Settings, is_loopback_address
from cronwire_server.storage.sql_keys import KeyStore

log = logging.getLogger(__name__)

FIRST_KEY_HINT = (
    "create an admin key first: cronwire-server keys create --database-url URL --namespace '*' --role admin "
    "--executors '*'"
)


class AuthRefused(Exception):
    """The server must not start as configured; the message says why and what to do."""


async def auth_interceptor(settings: Settings, keys: KeyStore) -> AuthInterceptor | None:
    """The interceptor if auth is on, None if it is off; AuthRefused if the server must not start."""
    loopback = is_loopback_address(settings.listen)
    if settings.insecure and settings.require_auth:
        raise AuthRefused("--insecure and --require-auth contradict each other: choose one")
    if settings.insecure:
        if not loopback:
            log.warning(
                "AUTHENTICATION IS OFF (--insecure) on %s: anyone who can reach this address can "
                "read, change and run every job. Use it only on a trusted network.",
                settings.listen,
            )
        return None
    # On loopback without --require-auth or TLS (a laptop), auth waits for the first key: a key
    # someone created is meant to be needed, and a server must not serve keyless callers beside it.
    open_until_keys = None
    if loopback and not settings.require_auth and not settings.tls_cert:
        open_until_keys = KeysExist(keys.any_created, settings.key_cache_seconds)
    # A process without the api role serves only health and reflection: no key is needed to start.
    if open_until_keys is None and "api" in settings.roles and not await keys.any_active():
        if not loopback:
            raise AuthRefused(
                f"refusing to serve on {settings.listen} without authentication, and the database "
                f"has no API key yet: {FIRST_KEY_HINT} (or pass --insecure to serve without "
                "authentication on a trusted network)"
            )
        log.warning("auth is on but the database has no API key yet: %s", FIRST_KEY_HINT)
    limiter = RateLimiter(settings.rate_limit_per_key, settings.rate_limit_burst)
    failures = RateLimiter(settings.auth_failures_per_peer, settings.auth_failure_burst)
    return AuthInterceptor(
        KeyCache(keys, settings.key_cache_seconds),
        limiter,
        frozenset(settings.auth_exempt_services),
        failures,
        open_until_keys,
    )
