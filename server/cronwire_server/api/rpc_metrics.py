"""RPC metrics: every RPC counted by method and final status code (names after
go-grpc-prometheus; the counters are defined in metrics.py)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from cronwire_server.api.handlers import behaviour_of, with_behaviour
from cronwire_server.metrics import RPC_HANDLED, RPC_SECONDS, RPC_STARTED

_STREAMING = {
    (False, False): "unary",
    (True, False): "client_stream",
    (False, True): "server_stream",
    (True, True): "bidi_stream",
}


def _code_after(error: BaseException | None, context: grpc.aio.ServicerContext[Any, Any]) -> str:
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED.name
    # Set by abort, abort_with_status or set_code; None when the handler just returned or raised.
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return grpc.StatusCode.OK.name if error is None else grpc.StatusCode.UNKNOWN.name


@dataclass
class _Rpc:
    labels: tuple[str, str, str]
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        RPC_STARTED.labels(*self.labels).inc()

    def end(self, error: BaseException | None, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        RPC_HANDLED.labels(*self.labels, _code_after(error, context)).inc()
        RPC_SECONDS.labels(*self.labels).observe(time.perf_counter() - self.started)


def _measured(behaviour: Callable[..., Any], labels: tuple[str, str, str]) -> Callable[..., Any]:
    """`behaviour` (a coroutine or async generator function), counted when it starts and ends."""
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            rpc = _Rpc(labels)
            error: BaseException | None = None
            try:
                async for response in behaviour(request, context):
                    yield response
            except BaseException as raised:
                error = raised
                raise
            finally:
                rpc.end(error, context)

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        rpc = _Rpc(labels)
        error: BaseException | None = None
        try:
            result = behaviour(request, context)
            return await result if inspect.isawaitable(result) else result
        except BaseException as raised:
            error = raised
            raise
        finally:
            rpc.end(error, context)

    return call


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts every RPC the server knows, by method and final status code.

    It must come first among the interceptors, so calls a later one refuses are counted too.
    Unknown methods are not counted: their names come from callers and would be unbounded.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        grpc_type = _STREAMING[(handler.request_streaming, handler.response_streaming)]
        return with_behaviour(handler, _measured(behaviour_of(handler), (grpc_type, service, method)))
