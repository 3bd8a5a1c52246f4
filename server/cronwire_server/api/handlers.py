"""Rewrapping a gRPC method handler, which is how a server interceptor runs code around a call:
take the handler's behaviour, wrap it, and serve the wrapper with the same streaming kind and
(de)serializers."""

from __future__ import annotations

from collections.abc import Callable
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
    the response streams."""
    behaviour: Callable[..., Any] = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    return behaviour


def with_behaviour(handler: Any, behaviour: Callable[..., Any]) -> Any:
    """A handler like `handler` that serves `behaviour` instead."""
    make = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
    return make(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
