"""Rewrapping a gRPC method handler, which is how a server interceptor runs code around a call:
take the handler's behaviour, wrap it, and serve the wrapper with the same streaming kind and
(de)serializers."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

# By (request_streaming, response_streaming).
_FACTORIES: dict[tuple[bool, bool], Callable[..., Any]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def behaviour_of(handler: Any) -> Callable[..., Any]:
    """The function `handler` serves: a coroutine function, or an async generator function when
    the response streams (whichever style the servicer wrote it in, see `_as_generator`)."""
    behaviour: Callable[..., Any] = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    if handler.response_streaming and not inspect.isasyncgenfunction(behaviour):
        return _as_generator(behaviour)
    return behaviour


class _WritesQueued:
    """A servicer context whose `write` hands the response to a queue instead of the wire."""

    def __init__(self, context: Any, queue: asyncio.Queue[Any]) -> None:
        self._context = context
        self._queue = queue

    async def write(self, message: Any) -> None:
        await self._queue.put(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _as_generator(behaviour: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    """A streaming behaviour written as a coroutine that calls `context.write` (the health
    servicer's Watch) as an async generator: wrappers then yield its responses like any other's,
    and gRPC never sees the two styles mixed in one call."""

    async def generate(request: Any, context: Any) -> AsyncIterator[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue(1)
        # Awaited below in every case: it lives exactly as long as the call.
        writer = asyncio.ensure_future(behaviour(request, _WritesQueued(context, queue)))
        try:
            while True:
                taken = asyncio.ensure_future(queue.get())
                await asyncio.wait({taken, writer}, return_when=asyncio.FIRST_COMPLETED)
                if taken.done():
                    yield taken.result()
                    continue
                taken.cancel()
                while not queue.empty():
                    yield queue.get_nowait()
                writer.result()  # its error, if it ended with one
                return
        finally:
            if not writer.done():
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer

    return generate


# More methods than any server here serves: past it, handlers are wrapped per call again.
MAX_WRAPPED_METHODS = 1024


class Rewrapped:
    """An interceptor's wrapping of each method's handler, made on the method's first call and
    reused after: `wrap(method, handler)` runs again only if the handler under it changes (a
    generic handler may return a new one per call).

    An interceptor's `intercept_service` runs for every call, but what it wraps a method's handler
    in depends only on the method and that handler; building the closures and handler objects
    once per method keeps that out of every call.
    """

    def __init__(self, wrap: Callable[[str, Any], Any]) -> None:
        self._wrap = wrap
        self._made: dict[str, tuple[Any, Any]] = {}

    def __call__(self, method: str, handler: Any) -> Any:
        made = self._made.get(method)
        if made is not None and made[0] is handler:
            return made[1]
        wrapped = self._wrap(method, handler)
        if made is not None or len(self._made) < MAX_WRAPPED_METHODS:
            self._made[method] = (handler, wrapped)
        return wrapped


def with_behaviour(handler: Any, behaviour: Callable[..., Any]) -> Any:
    """A handler like `handler` that serves `behaviour` instead."""
    make = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
    return make(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
