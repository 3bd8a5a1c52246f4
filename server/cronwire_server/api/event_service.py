"""cronwire.v1.EventService. The event log comes with a later change; until then every RPC
answers UNIMPLEMENTED."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from cronwire.v1 import event_service_pb2 as pb
from cronwire.v1 import event_service_pb2_grpc
from cronwire_server.api.status import unimplemented

Context = grpc.aio.ServicerContext[Any, Any]


class EventService(event_service_pb2_grpc.EventServiceServicer):
    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: Context
    ) -> AsyncIterator[pb.WatchEventsResponse]:
        await unimplemented(context, "WatchEvents")
        yield pb.WatchEventsResponse()  # pragma: no cover - makes this a generator

    async def ListEvents(self, request: pb.ListEventsRequest, context: Context) -> pb.ListEventsResponse:
        await unimplemented(context, "ListEvents")
