"""RPC metrics: every RPC counted by method and final status code (names after
go-grpc-prometheus; the counters are defined in metrics.py)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from cronwire_server.api.handlers import Rewrapped, behaviour_of, with_behaviour
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


class _Method:
    """One method's counters, their labels bound once: a call then only counts and observes."""

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self._labels = labels
        self._started = RPC_STARTED.labels(*labels)
        self._seconds = RPC_SECONDS.labels(*labels)
        # By code name, bound on a code's first use (at most one per status code).
        self._handled: dict[str, Any] = {}

    def start(self) -> float:
        self._started.inc()
        return time.perf_counter()

    def end(
        self, started: float, error: BaseException | None, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        code = _code_after(error, context)
        handled = self._handled.get(code)
        if handled is None:
            handled = self._handled[code] = RPC_HANDLED.labels(*self._labels, code)
        handled.inc()
        self._seconds.observe(time.perf_counter() - started)


def _measured(behaviour: Callable[..., Any], labels: tuple[str, str, str]) -> Callable[..., Any]:
    """`behaviour` (a coroutine or async generator function), counted when it starts and ends."""
    rpc = _Method(labels)
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            started = rpc.start()
            error: BaseException | None = None
            try:
                async for response in behaviour(request, context):
                    yield response
            except BaseException as raised:
                error = raised
                raise
            finally:
                rpc.end(started, error, context)

        return stream

    if inspect.iscoroutinefunction(behaviour):

        async def call_coroutine(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = rpc.start()
            error: BaseException | None = None
            try:
                return await behaviour(request, context)
            except BaseException as raised:
                error = raised
                raise
            finally:
                rpc.end(started, error, context)

        return call_coroutine

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = rpc.start()
        error: BaseException | None = None
        try:
            result = behaviour(request, context)
            return await result if inspect.isawaitable(result) else result
        except BaseException as raised:
            error = raised
            raise
        finally:
            rpc.end(started, error, context)

    return call


def _wrap(method_path: str, handler: Any) -> Any:
    service, _, method = method_path.lstrip("/").rpartition("/")
    grpc_type = _STREAMING[(handler.request_streaming, handler.response_streaming)]
    return with_behaviour(handler, _measured(behaviour_of(handler), (grpc_type, service, method)))


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts every RPC the server knows, by method and final status code.

    It must come first among the interceptors, so calls a later one refuses are counted too.
    Unknown methods are not counted: their names come from callers and would be unbounded.
    """

    def __init__(self) -> None:
        self._wrapped = Rewrapped(_wrap)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self._wrapped(handler_call_details.method, handler)
