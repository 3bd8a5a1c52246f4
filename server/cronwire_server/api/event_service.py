"""cronwire.v1.EventService: protos in, domain calls, protos out.

Responses with events are serialized here, not by gRPC: each event once (cached), each batch of
the hub once for all the watchers sent it, as bytes in the same wire format (`add_to_server`
registers a response serializer that passes them through).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from cronwire.v1 import event_service_pb2 as pb
from cronwire_server.api import convert, scope
from cronwire_server.api.paging import encode_token, page_from_request
from cronwire_server.api.status import server_streaming, unary
from cronwire_server.auth import principal
from cronwire_server.core import names
from cronwire_server.core.errors import InvalidArgument
from cronwire_server.core.model import Event, EventFilter
from cronwire_server.events import Batch, Delivery, EventManager

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
SERVICE = pb.DESCRIPTOR.services_by_name["EventService"].full_name


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _events_tag() -> bytes:
    """The key of an entry of `events` (a length-delimited field) in both responses that carry
    events: their bodies are built from the events' own serializations, one after another."""
    numbers = {
        m.DESCRIPTOR.fields_by_name["events"].number for m in (pb.WatchEventsResponse, pb.ListEventsResponse)
    }
    (number,) = numbers
    return _varint(number << 3 | 2)


EVENTS_TAG = _events_tag()


@dataclass
class EncodeCounts:
    """Serialization work of this process's EventServices: events serialized (each once while
    cached), and response bodies built from them (once per hub batch and distinct filter result
    for live watchers, however many share it; once per page for a replay or a listing)."""

    events: int = 0
    bodies: int = 0


encode_counts = EncodeCounts()


class _Encoded:
    """Each event converted and serialized once (per server: per database), as an entry of a
    response's `events`; watchers and listings of the same events share it."""

    def __init__(self, kept: int = CONVERTED_KEPT, kept_bytes: int = CONVERTED_KEPT_BYTES) -> None:
        self._entries: OrderedDict[int, bytes] = OrderedDict()
        self._kept = kept
        self._kept_bytes = kept_bytes
        self.bytes = 0

    def __call__(self, event: Event) -> bytes:
        found = self._entries.get(event.sequence)
        if found is not None:
            return found
        serialized = convert.event_to_pb(event).SerializeToString()
        entry = EVENTS_TAG + _varint(len(serialized)) + serialized
        encode_counts.events += 1
        self._entries[event.sequence] = entry
        self.bytes += len(entry)
        while len(self._entries) > self._kept or (self.bytes > self._kept_bytes and len(self._entries) > 1):
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= len(evicted)
        return entry


@dataclass(frozen=True)
class _Body:
    """Consecutive events' entries, one response's worth: bytes of a response without its other fields."""

    entries: bytes
    last_sequence: int


def _bodies(events: list[Event], entries: list[bytes]) -> list[_Body]:
    """`events` in consecutive bodies of at most MAX_RESPONSE_BYTES (at least one event each)."""
    if not entries:
        return []
    bodies: list[_Body] = []
    start = size = 0
    for index, entry in enumerate(entries):
        if index > start and size + len(entry) > MAX_RESPONSE_BYTES:
            bodies.append(_Body(b"".join(entries[start:index]), events[index - 1].sequence))
            start, size = index, 0
        size += len(entry)
    bodies.append(_Body(b"".join(entries[start:]), events[-1].sequence))
    encode_counts.bodies += 1
    return bodies


def _watch_response(body: bytes, latest_sequence: int) -> bytes:
    """A serialized WatchEventsResponse: the body's events, then the bookmark (the field order
    protobuf serializes in; a parser takes the concatenation as one message)."""
    return body + pb.WatchEventsResponse(latest_sequence=latest_sequence).SerializeToString()


def _joined(bodies: list[_Body], latest_sequence: int) -> list[bytes]:
    """Responses carrying `bodies` in order, as few as fit MAX_RESPONSE_BYTES (a body alone may
    be larger only if one event is); the last with `latest_sequence`, the others with the
    sequence of their last event."""
    responses: list[bytes] = []
    piece: list[_Body] = []
    size = 0
    for body in bodies:
        if piece and size + len(body.entries) > MAX_RESPONSE_BYTES:
            responses.append(_watch_response(b"".join(b.entries for b in piece), piece[-1].last_sequence))
            piece, size = [], 0
        piece.append(body)
        size += len(body.entries)
    if piece:
        entries = piece[0].entries if len(piece) == 1 else b"".join(b.entries for b in piece)
        responses.append(_watch_response(entries, latest_sequence))
    return responses


def _serialized(response: bytes | Message) -> bytes:
    """The response serializer: what the service serialized itself goes out as it is."""
    return response if isinstance(response, bytes) else response.SerializeToString()


def add_to_server(service: EventService, server: grpc.aio.Server) -> None:
    """Serve `service` as cronwire.v1.EventService. Unlike the generated
    `add_EventServiceServicer_to_server`, responses may be bytes the service serialized (the
    same protobuf wire format), so that every watcher of a batch can be sent the same bytes."""
    handlers = {
        "WatchEvents": grpc.unary_stream_rpc_method_handler(
            service.WatchEvents,
            request_deserializer=pb.WatchEventsRequest.FromString,
            response_serializer=_serialized,
        ),
        "ListEvents": grpc.unary_unary_rpc_method_handler(
            service.ListEvents,
            request_deserializer=pb.ListEventsRequest.FromString,
            response_serializer=_serialized,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


class EventService:
    """cronwire.v1.EventService; serve it with `add_to_server`: its responses are serialized
    here, each batch of events once for every watcher it goes to."""

    def __init__(self, events: EventManager) -> None:
        self._events = events
        self._entry = _Encoded()

    @server_streaming
    async def WatchEvents(self, request: pb.WatchEventsRequest, context: Context) -> AsyncIterator[bytes]:
        where = _filter(request)
        if request.after_sequence < 0:
            raise InvalidArgument.field("after_sequence", "must not be negative")
        async for delivery in self._events.watch(where, request.after_sequence):
            if not delivery.batches:
                yield _watch_response(b"", delivery.latest_sequence)
                continue
            for response in self._responses(delivery):
                yield response

    def _responses(self, delivery: Delivery) -> list[bytes]:
        """The responses that send `delivery`, none larger than MAX_RESPONSE_BYTES unless one
        event is; only the last may carry the delivery's bookmark (the others, their last event's).

        Each batch's events are serialized once, by the first watcher to send it, and kept with
        the batch for the others; so are the responses of a delivery of that batch alone, which
        are then the same bytes for every watcher (rebuilt, a copy, only for another bookmark).
        Several batches (a watcher catching up) go out joined into as few responses as fit.
        """
        latest = delivery.latest_sequence
        if len(delivery.batches) == 1:
            cache = delivery.batches[0].encoded
            made: tuple[int, list[bytes]] | None = cache.get("responses")
            if made is None or made[0] != latest:
                made = cache["responses"] = (latest, _joined(self._bodies_of(delivery.batches[0]), latest))
            return made[1]
        return _joined([body for batch in delivery.batches for body in self._bodies_of(batch)], latest)

    def _bodies_of(self, batch: Batch) -> list[_Body]:
        bodies: list[_Body] | None = batch.encoded.get("bodies")
        if bodies is None:
            bodies = batch.encoded["bodies"] = _bodies(batch.events, [self._entry(e) for e in batch.events])
        return bodies

    @unary
    async def ListEvents(self, request: pb.ListEventsRequest, context: Context) -> bytes:
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
        bodies = _bodies(listing.items, [self._entry(e) for e in listing.items])
        next_after = listing.next_after
        if len(bodies) > 1:  # the page is cut at the size bound; the rest follows
            next_after = str(bodies[0].last_sequence)
        first = bodies[0].entries if bodies else b""
        token = pb.ListEventsResponse(next_page_token=encode_token(next_after, filters))
        return first + token.SerializeToString()
