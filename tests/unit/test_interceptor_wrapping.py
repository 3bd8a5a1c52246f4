"""Interceptors wrap a method's handler once and reuse the wrapper; the document-size check wraps
only methods whose requests can hold a document."""

from __future__ import annotations

from typing import Any

import grpc

from cronwire.v1 import job_service_pb2, schedule_service_pb2
from cronwire_server.api.handlers import Rewrapped
from cronwire_server.api.rpc_metrics import RpcMetricsInterceptor
from cronwire_server.auth.interceptor import RequestDecoding
from cronwire_server.limits import DocumentSizes, Limits

GET_JOB = "/cronwire.v1.JobService/GetJob"


async def _respond(request: Any, context: Any) -> Any:
    return request


def _handler(request_type: Any) -> Any:
    return grpc.unary_unary_rpc_method_handler(
        _respond, request_deserializer=request_type.FromString, response_serializer=lambda m: m
    )


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def _intercepted(interceptor: Any, method: str, handler: Any) -> Any:
    async def continuation(details: Any) -> Any:
        return handler

    return await interceptor.intercept_service(continuation, _Details(method))


def test_a_wrapper_is_made_once_per_method_and_again_for_a_new_handler() -> None:
    made: list[tuple[str, object]] = []

    def wrap(method: str, handler: object) -> object:
        made.append((method, handler))
        return ("wrapped", handler)

    wrapped = Rewrapped(wrap)
    first, second = object(), object()
    assert wrapped("/s/A", first) is wrapped("/s/A", first)
    assert wrapped("/s/B", first) == ("wrapped", first)
    assert wrapped("/s/A", second) == ("wrapped", second)
    assert made == [("/s/A", first), ("/s/B", first), ("/s/A", second)]


async def test_interceptors_reuse_their_wrapper_per_method() -> None:
    handler = _handler(job_service_pb2.CreateJobRequest)
    for interceptor in (RpcMetricsInterceptor(), RequestDecoding(), DocumentSizes(Limits())):
        method = "/cronwire.v1.JobService/CreateJob"
        once = await _intercepted(interceptor, method, handler)
        assert once is not handler
        assert await _intercepted(interceptor, method, handler) is once


async def test_document_sizes_check_only_requests_that_can_hold_a_document() -> None:
    sizes = DocumentSizes(Limits())
    get = _handler(job_service_pb2.GetJobRequest)
    assert await _intercepted(sizes, GET_JOB, get) is get
    for method, request_type in (
        ("/cronwire.v1.JobService/CreateJob", job_service_pb2.CreateJobRequest),
        ("/cronwire.v1.JobService/UpdateJob", job_service_pb2.UpdateJobRequest),
        ("/cronwire.v1.JobService/RunJob", job_service_pb2.RunJobRequest),
        ("/cronwire.v1.ScheduleService/CreateSchedule", schedule_service_pb2.CreateScheduleRequest),
    ):
        handler = _handler(request_type)
        assert await _intercepted(sizes, method, handler) is not handler, method
    # A request whose type cannot be told is checked.
    raw = grpc.unary_unary_rpc_method_handler(_respond)
    assert await _intercepted(sizes, GET_JOB, raw) is not raw
