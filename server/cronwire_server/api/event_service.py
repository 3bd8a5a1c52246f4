"""cronwire.v1.EventService: protos in, domain calls, protos out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from cronwire.v1 import event_service_pb2 as pb
from cronwire.v1 import event_service_pb2_grpc
from cronwire_server.api import convert, names
from cronwire_server.api.paging import encode_token, page_from_request
from cronwire_server.api.status import server_streaming, unary
from cronwire_server.errors import InvalidArgument
from cronwire_server.events import EventManager
from cronwire_server.model import EventFilter

Context = grpc.aio.ServicerContext[Any, Any]
DEFAULT_PAGE = 100


def _filter(request: pb.WatchEventsRequest | pb.ListEventsRequest) -> EventFilter:
    namespace = "" if request.parent in ("", "namespaces/-") else names.parse_parent(request.parent)

    def resource_id(value: str, kind: str, field: str) -> str:
        if not value:
            return ""
        name = names.parse_name(value, kind, field)
        if namespace and name.namespace != namespace:
            raise InvalidArgument.field(field, f"must be a {kind} of namespace {namespace}")
        return name.id

    types = frozenset(
        convert.event_type_from_pb(value, f"event_types[{index}]")
        for index, value in enumerate(request.event_types)
    )
    job_id = resource_id(request.job, "job", "job")
    schedule_id = resource_id(request.schedule, "schedule", "schedule")
    if not namespace and (job_id or schedule_id):
        # A job or schedule id names a resource only within its namespace.
        namespace = names.parse_name(
            request.job or request.schedule, "job" if request.job else "schedule"
        ).namespace
    return EventFilter(namespace=namespace, job_id=job_id, schedule_id=schedule_id, types=types)


class EventService(event_service_pb2_grpc.EventServiceServicer):
    def __init__(self, events: EventManager) -> None:
        self._events = events

    @server_streaming
    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: Context
    ) -> AsyncIterator[pb.WatchEventsResponse]:
        where = _filter(request)
        if request.after_sequence < 0:
            raise InvalidArgument.field("after_sequence", "must not be negative")
        async for delivery in self._events.watch(where, request.after_sequence):
            yield pb.WatchEventsResponse(
                events=[convert.event_to_pb(e) for e in delivery.events],
                latest_sequence=delivery.latest_sequence,
            )

    @unary
    async def ListEvents(self, request: pb.ListEventsRequest, context: Context) -> pb.ListEventsResponse:
        where = _filter(request)
        if request.after_sequence < 0:
            raise InvalidArgument.field("after_sequence", "must not be negative")
        filters = {"filter": repr(where), "after": request.after_sequence}
        page = page_from_request(request.page_size, request.page_token, filters, default_size=DEFAULT_PAGE)
        listing = await self._events.list_page(where, page, request.after_sequence)
        return pb.ListEventsResponse(
            events=[convert.event_to_pb(e) for e in listing.items],
            next_page_token=encode_token(listing.next_after, filters),
        )
