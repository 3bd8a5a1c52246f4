"""The RPCs of later changes answer UNIMPLEMENTED over a real channel, not UNKNOWN."""

from __future__ import annotations

import grpc
import pytest

from cronwire.v1 import event_service_pb2
from cronwire.v1.event_service_pb2_grpc import EventServiceStub

NAME = "namespaces/ops/executions/e1"


async def test_event_service(events: EventServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await events.ListEvents(event_service_pb2.ListEventsRequest())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in events.WatchEvents(event_service_pb2.WatchEventsRequest()):
            pass
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
