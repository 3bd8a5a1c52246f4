"""Every service is served through generic handlers, from one pending request.

grpc.aio keeps a pending request per registered method and waits on all of them after every
call it accepts: about 40 µs of CPU per call with cronwire's methods (`api/registration.py`).
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cronwire.v1 import event_service_pb2, event_service_pb2_grpc, job_service_pb2, job_service_pb2_grpc
from cronwire_server.app import SERVICE_NAMES


def _pending_call_requests() -> list[asyncio.Task[object]]:
    """The server's tasks waiting for a call to arrive (grpc.aio's `_request_call` and one
    `_request_registered_call` per registered method)."""
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "").startswith("AioServer._request")
    ]


async def test_every_service_answers_and_one_request_waits_for_all_of_them(
    channel: grpc.aio.Channel,
) -> None:
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await jobs.GetJob(job_service_pb2.GetJobRequest(name="namespaces/default/jobs/nope"))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND

    # EventService is added by hand (its responses are bytes), the others by generated code.
    listed = await event_service_pb2_grpc.EventServiceStub(channel).ListEvents(
        event_service_pb2.ListEventsRequest(page_size=1)
    )
    assert isinstance(listed, event_service_pb2.ListEventsResponse)

    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    asked = [reflection_pb2.ServerReflectionRequest(list_services="")]
    answers = reflection.ServerReflectionInfo(iter(asked))
    services = {service.name async for answer in answers for service in answer.list_services_response.service}
    assert set(SERVICE_NAMES) <= services

    assert len(_pending_call_requests()) == 1
