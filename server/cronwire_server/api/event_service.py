"""cronwire.v1.EventService: protos in, domain calls, protos out."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

from cronwire.v1 import event_pb2, event_service_pb2_grpc
from cronwire.v1 import event_service_pb2 as pb
from cronwire_server.api import convert, names, scope
from cronwire_server.api.paging import encode_token, page_from_request
from cronwire_server.api.status import server_streaming, unary
from cronwire_server.auth import principal
from cronwire_server.errors import InvalidArgument
from cronwire_server.events import EventManager
from cronwire_server.model import Event, EventFilter

Context = grpc.aio.ServicerContext[Any, Any]
DEFAULT_PAGE = 100


def _filter(request: pb.WatchEventsRequest | pb.ListEventsRequest) -> EventFilter:
    namespace = "" if request.parent in ("", "namespaces/-") else scope.parent(request.parent)

    def resource(value: str, kind: str, field: str) -> names.ResourceName | None:
        if not value:
            return None
        name = scope.name(value, kind, field)
        if namespace and name.namespace != namespace:
            raise InvalidArgument.field(field, f"must be a {kind} of namespace {namespace}")
        return name

    types = frozenset(
        convert.event_type_from_pb(value, f"event_types[{index}]")
        for index, value in enumerate(request.event_types)
    )
    job = resource(request.job, "job", "job")
    schedule = resource(request.schedule, "schedule", "schedule")
    named = job or schedule
    if not namespace and named:
        # A job or schedule id names a resource only within its namespace.
        namespace = named.namespace
    return EventFilter(
        namespace=namespace,
        job_id=job.id if job else "",
        schedule_id=schedule.id if schedule else "",
        types=types,
        # Across namespaces, only those the caller's key covers.
        namespaces=None if namespace else principal.visible_namespaces(),
    )


# Responses stay well under the 4 MiB a default client accepts, however large the snapshots.
MAX_RESPONSE_BYTES = 1024 * 1024
CONVERTED_KEPT = 4096
# Large snapshots must not pin memory after their watchers are gone: the cache is bounded in
# serialized bytes too.
CONVERTED_KEPT_BYTES = 16 * 1024 * 1024


class _Converted:
    """Watchers of the same events share one conversion of each (per server: per database)."""

    def __init__(self, kept: int = CONVERTED_KEPT, kept_bytes: int = CONVERTED_KEPT_BYTES) -> None:
        self._messages: OrderedDict[int, tuple[event_pb2.Event, int]] = OrderedDict()
        self._kept = kept
        self._kept_bytes = kept_bytes
        self.bytes = 0

    def __call__(self, event: Event) -> event_pb2.Event:
        found = self._messages.get(event.sequence)
        if found is not None:
            return found[0]
        message = convert.event_to_pb(event)
        size = message.ByteSize()
        self._messages[event.sequence] = (message, size)
        self.bytes += size
        while len(self._messages) > self._kept or (self.bytes > self._kept_bytes and len(self._messages) > 1):
            _, (_, evicted) = self._messages.popitem(last=False)
            self.bytes -= evicted
        return message


def _by_size(events: list[event_pb2.Event]) -> Iterator[list[event_pb2.Event]]:
    """`events` in consecutive pieces of at most MAX_RESPONSE_BYTES (at least one event each)."""
    piece: list[event_pb2.Event] = []
    size = 0
    for message in events:
        length = message.ByteSize()
        if piece and size + length > MAX_RESPONSE_BYTES:
            yield piece
            piece, size = [], 0
        piece.append(message)
        size += length
    if piece:
        yield piece


class EventService(event_service_pb2_grpc.EventServiceServicer):
    def __init__(self, events: EventManager) -> None:
        self._events = events
        self._event_pb = _Converted()

    @server_streaming
    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: Context
    ) -> AsyncIterator[pb.WatchEventsResponse]:
        where = _filter(request)
        if request.after_sequence < 0:
            raise InvalidArgument.field("after_sequence", "must not be negative")
        async for delivery in self._events.watch(where, request.after_sequence):
            if not delivery.events:
                yield pb.WatchEventsResponse(latest_sequence=delivery.latest_sequence)
                continue
            chunks = list(_by_size([self._event_pb(e) for e in delivery.events]))
            for index, chunk in enumerate(chunks):
                # Only the last piece of a batch may carry the batch's bookmark.
                last = index == len(chunks) - 1
                bookmark = delivery.latest_sequence if last else chunk[-1].sequence
                yield pb.WatchEventsResponse(events=chunk, latest_sequence=bookmark)

    @unary
    async def ListEvents(self, request: pb.ListEventsRequest, context: Context) -> pb.ListEventsResponse:
        where = _filter(request)
        if request.after_sequence < 0:
            raise InvalidArgument.field("after_sequence", "must not be negative")
        filters = {
            "namespace": where.namespace,
            "job": where.job_id,
            "schedule": where.schedule_id,
            "types": sorted(t.value for t in where.types),
            "after": request.after_sequence,
        }
        page = page_from_request(request.page_size, request.page_token, filters, default_size=DEFAULT_PAGE)
        listing = await self._events.list_page(where, page, request.after_sequence)
        events = [self._event_pb(e) for e in listing.items]
        first = next(_by_size(events), [])
        next_after = listing.next_after
        if len(first) < len(events):  # the page is cut at the size bound; the rest follows
            next_after = str(first[-1].sequence)
        return pb.ListEventsResponse(events=first, next_page_token=encode_token(next_after, filters))
