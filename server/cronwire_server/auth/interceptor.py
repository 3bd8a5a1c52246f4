"""One interceptor checks every RPC, streaming ones included: who calls, whether its role may,
and whether it is within its request rate. It then records the caller for the services.

A stream outlives the check that admitted it, so its key is checked again while it is open
(a few times per key-cache period): a stream of a key revoked meanwhile ends UNAUTHENTICATED
within the key-cache period after the revocation, like the next unary call would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from cronwire_server.api.handlers import Rewrapped, behaviour_of, with_behaviour
from cronwire_server.api.status import abort
from cronwire_server.auth import principal
from cronwire_server.auth.cache import KeyCache
from cronwire_server.auth.keys import ApiKey, parse_token, secret_matches
from cronwire_server.auth.ratelimit import RateLimiter
from cronwire_server.auth.roles import required_role
from cronwire_server.core.errors import (
    CronwireError,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    RateLimited,
    StorageUnavailable,
    Unauthenticated,
)

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

# The same words whatever was wrong (missing, malformed, unknown, wrong secret, revoked).
UNAUTHENTICATED = "a valid API key is required: send the metadata `authorization: Bearer <key>`"
# An open stream's key is looked up again this many times per key-cache period (the lookup is
# served by the cache, so this costs a query per key and period, not per stream).
RECHECKS_PER_PERIOD = 4
MIN_RECHECK_SECONDS = 0.05


def _address(peer: str) -> str:
    """`ipv4:10.0.0.7:51234` -> `ipv4:10.0.0.7`: one client machine, whatever its port."""
    address, _, port = peer.rpartition(":")
    return address if address and port.isdigit() else peer


def _bearer(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, credentials = value.partition(" ")
            return credentials.strip() if scheme.lower() == "bearer" else ""
    return ""


def _then(handler: Any, after: Callable[[], None]) -> Any:
    """The unary `handler`, calling `after` once it has answered."""
    behaviour = behaviour_of(handler)

    async def respond(request: Any, context: Context) -> Any:
        try:
            return await behaviour(request, context)
        finally:
            after()

    return with_behaviour(handler, respond)


class KeysExist:
    """Whether the database has had a key, read at most once per `ttl` until it has one; from then
    on, for good: revoking every key must not open the server again."""

    def __init__(self, ask: Callable[[], Awaitable[bool]], ttl: float) -> None:
        self._ask = ask
        self._ttl = ttl
        self._known = False
        self._read_at = -math.inf

    async def __call__(self) -> bool:
        if not self._known and time.monotonic() - self._read_at >= self._ttl:
            self._known = await self._ask()
            self._read_at = time.monotonic()
        return self._known

    def forget(self) -> None:
        """Read again on the next call (a key may have just been created)."""
        self._read_at = -math.inf


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Admits a call with a valid, unrevoked key whose role the method allows; else refuses it with
    UNAUTHENTICATED, PERMISSION_DENIED or RESOURCE_EXHAUSTED before the service sees it.

    With `open_until_keys` (a loopback server started without --require-auth), calls pass
    unchecked, as with auth off, until the database has a key: the first key turns auth on."""

    def __init__(
        self,
        keys: KeyCache,
        limiter: RateLimiter,
        exempt_services: frozenset[str],
        failures: RateLimiter | None = None,
        open_until_keys: KeysExist | None = None,
    ) -> None:
        self._keys = keys
        self._open_until_keys = open_until_keys
        self._limiter = limiter
        # Failed authentications per client address: guessing costs lookups and log lines.
        self._failures = failures or RateLimiter(0, 1)
        self._exempt = exempt_services
        self._recheck_every = max(keys.ttl / RECHECKS_PER_PERIOD, MIN_RECHECK_SECONDS)
        # Each method's handler, guarded (or, while open until keys exist, as it is), made once.
        self._guarded = Rewrapped(self._guard)
        self._open = Rewrapped(self._open_for)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.split("/")[1] in self._exempt:
            return handler
        if self._open_until_keys is not None and not await self._keys_exist():
            return self._open(method, handler)
        return self._guarded(method, handler)

    def _open_for(self, method: str, handler: Any) -> Any:
        """`handler` as served before any key exists: unchecked (CreateKey then reads again)."""
        if method.endswith("/CreateKey"):
            assert self._open_until_keys is not None
            return _then(handler, self._open_until_keys.forget)
        return handler

    def _guard(self, method: str, handler: Any) -> Any:
        return _guarded(handler, lambda context: self._admit(method, context), self._revalidate)

    async def _keys_exist(self) -> bool:
        assert self._open_until_keys is not None
        try:
            return await self._open_until_keys()
        except StorageUnavailable:
            return True  # unknown: checked like any call (the key lookup will say UNAVAILABLE)

    async def _admit(self, method: str, context: Context) -> ApiKey:
        peer = _address(context.peer())
        try:
            wait = self._failures.wait(peer)
            if wait > 0:
                raise RateLimited(
                    f"too many failed authentications from this address (over "
                    f"{self._failures.rate:g} per second, bursts of {self._failures.burst}); "
                    f"retry in {wait:.2f}s",
                    wait,
                )
            try:
                key = await self._authenticate(_bearer(context))
            except Unauthenticated:
                self._failures.acquire(peer)
                raise
            self._authorize(method, key)
        except CronwireError as error:
            await abort(context, error)
        principal.set_current(principal.Principal(key))
        return key

    async def _revalidate(self, stream: AsyncIterator[Any], key: ApiKey) -> AsyncIterator[Any]:
        """`stream`'s responses for as long as `key` stays valid; UNAUTHENTICATED once it is not,
        even while the stream waits for its next response."""
        step: asyncio.Task[Any] | None = None
        try:
            while True:
                step = asyncio.ensure_future(anext(stream))
                while True:
                    done, _ = await asyncio.wait((step,), timeout=self._recheck_every)
                    if done:
                        break
                    if not await self._still_valid(key):
                        raise Unauthenticated(UNAUTHENTICATED)
                try:
                    response = step.result()
                except StopAsyncIteration:
                    return
                step = None
                yield response
        finally:
            if step is not None and not step.done():
                step.cancel()
                with contextlib.suppress(BaseException):
                    await step
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _still_valid(self, key: ApiKey) -> bool:
        try:
            found = await self._keys.lookup(key.id)
        except StorageUnavailable as error:
            # Unknown is not revoked: the stream goes on, and the next check asks again.
            log.warning("cannot re-check key %s of an open stream: %s", key.name, error)
            return True
        return found is not None and found.key.revoke_time is None

    async def _authenticate(self, bearer: str) -> ApiKey:
        token = parse_token(bearer)
        found = await self._keys.lookup(token.key_id) if token else None
        if token is None or found is None or found.key.revoke_time is not None:
            raise Unauthenticated(UNAUTHENTICATED)
        if not secret_matches(token.secret, found.secret_sha256):
            raise Unauthenticated(UNAUTHENTICATED)
        return found.key

    def _authorize(self, method: str, key: ApiKey) -> None:
        needed = required_role(method)
        if needed is None:
            raise PermissionDenied(f"{method} is not open to API keys")
        if not key.role.may(needed):
            raise PermissionDenied(
                f"key {key.name} has role {key.role.name.lower()}; {method} needs {needed.name.lower()}"
            )
        wait = self._limiter.acquire(key.id)
        if wait > 0:
            raise RateLimited(
                f"key {key.name} is over its rate limit of {self._limiter.rate:g} requests per second "
                f"(bursts of {self._limiter.burst}); retry in {wait:.2f}s",
                wait,
            )


Admit = Callable[[Context], Awaitable[ApiKey]]
Revalidate = Callable[[AsyncIterator[Any], ApiKey], AsyncIterator[Any]]


def _guarded(handler: Any, admit: Admit, revalidate: Revalidate) -> Any:
    """`handler` with `admit` run first in the call's own task, whatever its streaming kind; a
    streaming response goes on only while the key stays valid."""
    behaviour = behaviour_of(handler)
    if not handler.response_streaming:

        async def respond(request: Any, context: Context) -> Any:
            await admit(context)
            return await behaviour(request, context)

        return with_behaviour(handler, respond)

    async def respond_streaming(request: Any, context: Context) -> AsyncIterator[Any]:
        key = await admit(context)
        try:
            async for response in revalidate(behaviour(request, context), key):
                yield response
        except Unauthenticated as error:
            log.info("ending a stream of key %s: the key is no longer valid", key.name)
            await abort(context, error)

    return with_behaviour(handler, respond_streaming)


_RAW_FACTORIES = {
    False: grpc.unary_unary_rpc_method_handler,
    True: grpc.unary_stream_rpc_method_handler,
}


def _decoder(handler: Any) -> Callable[[bytes], Any]:
    decode: Callable[[bytes], Any] = handler.request_deserializer
    message = getattr(getattr(decode, "__self__", None), "__name__", "request")

    def decoded(raw: bytes) -> Any:
        try:
            return decode(raw)
        except Exception as error:  # DecodeError, or whatever a deserializer raises on bad bytes
            raise InvalidArgument(
                [FieldViolation("request", f"is not a valid {message} message: {type(error).__name__}")]
            ) from None

    return decoded


class RequestDecoding(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Decodes each request inside the call, after the interceptors before it (auth) admitted it.

    gRPC would decode before any interceptor runs: a caller without a key could make the server
    parse whatever it sends, and bytes that are not a message came back UNKNOWN quoting the
    parser, with a traceback in the log. Installed after AuthInterceptor (or alone with auth
    off): undecodable bytes are INVALID_ARGUMENT, logged at most as a refused call.
    """

    def __init__(self) -> None:
        self._wrapped = Rewrapped(_decoding)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self._wrapped(handler_call_details.method, handler)


def _decoding(method: str, handler: Any) -> Any:
    """`handler`, taking the raw request and decoding it itself."""
    if handler.request_streaming or handler.request_deserializer is None:
        return handler
    behaviour, decode = behaviour_of(handler), _decoder(handler)
    make = _RAW_FACTORIES[handler.response_streaming]
    if not handler.response_streaming:

        async def respond(raw: bytes, context: Context) -> Any:
            try:
                request = decode(raw)
            except CronwireError as error:
                await abort(context, error)
            return await behaviour(request, context)

        return make(respond, request_deserializer=None, response_serializer=handler.response_serializer)

    async def respond_streaming(raw: bytes, context: Context) -> AsyncIterator[Any]:
        try:
            request = decode(raw)
        except CronwireError as error:
            await abort(context, error)
        async for response in behaviour(request, context):
            yield response

    return make(respond_streaming, request_deserializer=None, response_serializer=handler.response_serializer)
