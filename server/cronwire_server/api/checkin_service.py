"""cronwire.v1.CheckInService: check-ins (dead man's switches) and their pings."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from cronwire.v1 import checkin_pb2, checkin_service_pb2, checkin_service_pb2_grpc
from cronwire_server.api import convert, fields, scope
from cronwire_server.api.masks import mask_paths, merge
from cronwire_server.api.paging import encode_token, page_from_request
from cronwire_server.api.status import unary
from cronwire_server.auth import principal
from cronwire_server.core import checkins, names
from cronwire_server.core.checkins import CheckIn, PingKind
from cronwire_server.core.errors import AlreadyExists, CronwireError, InvalidArgument, NotFound
from cronwire_server.core.model import AllOfSpec, AnyOfSpec, BusinessDaySpec, TriggerSpec
from cronwire_server.storage.sql_notifications import NotificationStore

Context = grpc.aio.ServicerContext[Any, Any]

MUTABLE = frozenset({"description", "trigger", "time_zone", "grace", "labels"})
OUTPUT_ONLY = frozenset(
    {
        "name",
        "next_expected_time",
        "last_ping_time",
        "last_ping_kind",
        "last_duration",
        "missed",
        "create_time",
        "etag",
    }
)

_KIND = {
    checkin_pb2.CHECK_IN_PING_KIND_UNSPECIFIED: PingKind.SUCCESS,
    checkin_pb2.CHECK_IN_PING_KIND_SUCCESS: PingKind.SUCCESS,
    checkin_pb2.CHECK_IN_PING_KIND_START: PingKind.START,
    checkin_pb2.CHECK_IN_PING_KIND_FAIL: PingKind.FAIL,
}
_KIND_PB = {
    PingKind.SUCCESS: checkin_pb2.CHECK_IN_PING_KIND_SUCCESS,
    PingKind.START: checkin_pb2.CHECK_IN_PING_KIND_START,
    PingKind.FAIL: checkin_pb2.CHECK_IN_PING_KIND_FAIL,
}


class UnknownToken(NotFound):
    """The same answer for a token of no check-in and one of a namespace the caller may not see."""

    def __init__(self) -> None:
        CronwireError.__init__(self, "no check-in has this token", reason="CHECK_IN_NOT_FOUND")
        self.kind, self.name = "check_in", ""


def _business_days(spec: TriggerSpec) -> bool:
    if isinstance(spec, BusinessDaySpec):
        return True
    if isinstance(spec, AnyOfSpec | AllOfSpec):
        return any(_business_days(s) for s in spec.triggers)
    return False


def check_in_from_pb(message: checkin_pb2.CheckIn, namespace: str, check_in_id: str) -> CheckIn:
    fields.required(message.HasField("trigger"), "trigger")
    trigger = convert.trigger_from_pb(message.trigger, namespace=namespace)
    if _business_days(trigger):
        raise InvalidArgument.field("trigger", "a check-in cannot use business-day triggers (no calendars)")
    grace = convert.optional_duration(message, "grace") or checkins.DEFAULT_GRACE
    return checkins.validate(
        CheckIn(
            namespace=namespace,
            id=check_in_id,
            trigger=trigger,
            time_zone=message.time_zone or "UTC",
            description=message.description,
            grace=grace,
            labels=dict(message.labels),
        )
    )


def check_in_to_pb(check_in: CheckIn) -> checkin_pb2.CheckIn:
    message = checkin_pb2.CheckIn(
        name=check_in.name,
        description=check_in.description,
        time_zone=check_in.time_zone,
        labels=check_in.labels,
        missed=check_in.missed,
        etag=check_in.etag,
    )
    convert.trigger_to_pb(check_in.trigger, message.trigger, check_in.namespace)
    convert.set_duration(message.grace, check_in.grace)
    convert.set_time(message.next_expected_time, check_in.next_expected_time)
    convert.set_time(message.last_ping_time, check_in.last_ping_time)
    if check_in.last_ping_kind is not None:
        message.last_ping_kind = _KIND_PB[check_in.last_ping_kind]
    convert.set_duration(message.last_duration, check_in.last_duration)
    convert.set_time(message.create_time, check_in.create_time)
    return message


class CheckInService(checkin_service_pb2_grpc.CheckInServiceServicer):
    def __init__(self, store: NotificationStore) -> None:
        self._store = store

    @unary
    async def CreateCheckIn(
        self, request: checkin_service_pb2.CreateCheckInRequest, context: Context
    ) -> checkin_service_pb2.CreateCheckInResponse:
        namespace = scope.parent(request.parent)
        check_in_id = (
            names.check_id(request.check_in_id, "check_in_id")
            if request.check_in_id
            else names.new_id("check-in")
        )
        fields.required(request.HasField("check_in"), "check_in")
        with fields.under("check_in"):
            check_in = check_in_from_pb(request.check_in, namespace, check_in_id)
        now = await self._store.now()
        check_in.create_time = now
        first = checkins.next_tick(check_in, now)
        if request.validate_only:
            try:
                await self._store.get_check_in(namespace, check_in_id)
            except NotFound:
                shown = dataclasses.replace(check_in, next_expected_time=first)
                return checkin_service_pb2.CreateCheckInResponse(check_in=check_in_to_pb(shown))
            raise AlreadyExists("check_in", check_in.name)
        token, digest = checkins.new_token()
        stored = await self._store.create_check_in(check_in, digest, first)
        return checkin_service_pb2.CreateCheckInResponse(check_in=check_in_to_pb(stored), token=token)

    @unary
    async def GetCheckIn(
        self, request: checkin_service_pb2.GetCheckInRequest, context: Context
    ) -> checkin_service_pb2.GetCheckInResponse:
        name = scope.name(request.name, "check_in")
        check_in = await self._store.get_check_in(name.namespace, name.id)
        return checkin_service_pb2.GetCheckInResponse(check_in=check_in_to_pb(check_in))

    @unary
    async def ListCheckIns(
        self, request: checkin_service_pb2.ListCheckInsRequest, context: Context
    ) -> checkin_service_pb2.ListCheckInsResponse:
        namespace = scope.parent(request.parent)
        filters = {"namespace": namespace, "kind": "check_ins"}
        page = page_from_request(request.page_size, request.page_token, filters)
        listing = await self._store.list_check_ins(namespace, page)
        return checkin_service_pb2.ListCheckInsResponse(
            check_ins=[check_in_to_pb(c) for c in listing.items],
            next_page_token=encode_token(listing.next_after, filters),
        )

    @unary
    async def UpdateCheckIn(
        self, request: checkin_service_pb2.UpdateCheckInRequest, context: Context
    ) -> checkin_service_pb2.UpdateCheckInResponse:
        fields.required(request.HasField("check_in"), "check_in")
        update = request.check_in
        name = scope.name(update.name, "check_in", "check_in.name")
        mask = request.update_mask if request.HasField("update_mask") else None
        paths = mask_paths(update, mask, mutable=MUTABLE, output_only=OUTPUT_ONLY)

        def change(current: CheckIn) -> CheckIn:
            # Checked before anything is written, in the transaction that writes it.
            merged = check_in_to_pb(current)
            merge(merged, update, paths)
            updated = check_in_from_pb(merged, name.namespace, name.id)
            updated.create_time = current.create_time
            return updated

        with fields.under("check_in"):
            updated = await self._store.update_check_in(
                name.namespace,
                name.id,
                change,
                update.etag,
                checkins.next_tick,
                validate_only=request.validate_only,
            )
        return checkin_service_pb2.UpdateCheckInResponse(check_in=check_in_to_pb(updated))

    @unary
    async def DeleteCheckIn(
        self, request: checkin_service_pb2.DeleteCheckInRequest, context: Context
    ) -> checkin_service_pb2.DeleteCheckInResponse:
        name = scope.name(request.name, "check_in")
        await self._store.delete_check_in(
            name.namespace, name.id, request.etag, actor=principal.current_actor()
        )
        return checkin_service_pb2.DeleteCheckInResponse()

    @unary
    async def CheckIn(
        self, request: checkin_service_pb2.CheckInRequest, context: Context
    ) -> checkin_service_pb2.CheckInResponse:
        fields.required(bool(request.token), "token")
        if request.kind not in _KIND:
            raise InvalidArgument.field("kind", f"unknown value {request.kind}")
        found = await ping(self._store, request.token, _KIND[request.kind])
        return checkin_service_pb2.CheckInResponse(check_in=check_in_to_pb(found))


async def ping(store: NotificationStore, token: str, kind: PingKind) -> CheckIn:
    """Record a ping by token. NOT_FOUND for an unknown token, and for the token of a check-in in a
    namespace the caller may not see (nothing recorded then)."""
    found = await store.check_in_of_token(checkins.token_digest(token))
    if found is None or not principal.current().sees(found.namespace):
        raise UnknownToken()
    return await store.ping(found.namespace, found.id, kind, checkins.next_tick)


def http_pinger(store: NotificationStore) -> Callable[[str, str], Awaitable[bool]]:
    """`POST /ping/TOKEN[/start|/fail]` on the HTTP listener: the token alone authorizes a ping."""

    async def ping_by_http(token: str, kind: str) -> bool:
        try:
            await ping(store, token, PingKind(kind))
        except NotFound:
            return False
        return True

    return ping_by_http
