"""One interceptor checks every RPC, streaming ones included: who calls, whether its role may,
and whether it is within its request rate. It then records the caller for the services."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from cronwire_server.api.handlers import behaviour_of, with_behaviour
from cronwire_server.api.status import abort
from cronwire_server.auth import principal
from cronwire_server.auth.cache import KeyCache
from cronwire_server.auth.keys import ApiKey, parse_token, secret_matches
from cronwire_server.auth.ratelimit import RateLimiter
from cronwire_server.auth.roles import required_role
from cronwire_server.errors import CronwireError, PermissionDenied, RateLimited, Unauthenticated

Context = grpc.aio.ServicerContext[Any, Any]

# The same words whatever was wrong (missing, malformed, unknown, wrong secret, revoked).
UNAUTHENTICATED = "a valid API key is required: send the metadata `authorization: Bearer <key>`"


def _bearer(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, credentials = value.partition(" ")
            return credentials.strip() if scheme.lower() == "bearer" else ""
    return ""


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Admits a call with a valid, unrevoked key whose role the method allows; else refuses it with
    UNAUTHENTICATED, PERMISSION_DENIED or RESOURCE_EXHAUSTED before the service sees it."""

    def __init__(self, keys: KeyCache, limiter: RateLimiter, exempt_services: frozenset[str]) -> None:
        self._keys = keys
        self._limiter = limiter
        self._exempt = exempt_services

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.split("/")[1] in self._exempt:
            return handler
        return _guarded(handler, lambda context: self._admit(method, context))

    async def _admit(self, method: str, context: Context) -> None:
        try:
            key = await self._authenticate(_bearer(context))
            self._authorize(method, key)
        except CronwireError as error:
            await abort(context, error)
        principal.set_current(principal.Principal(key))

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
        if key.role < needed:
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


Admit = Callable[[Context], Awaitable[None]]


def _guarded(handler: Any, admit: Admit) -> Any:
    """`handler` with `admit` run first in the call's own task, whatever its streaming kind."""
    behaviour = behaviour_of(handler)
    if not handler.response_streaming:

        async def respond(request: Any, context: Context) -> Any:
            await admit(context)
            return await behaviour(request, context)

        return with_behaviour(handler, respond)

    async def respond_streaming(request: Any, context: Context) -> AsyncIterator[Any]:
        await admit(context)
        async for response in behaviour(request, context):
            yield response

    return with_behaviour(handler, respond_streaming)
