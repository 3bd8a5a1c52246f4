"""cronwire.v1.CalendarService: protos in, domain calls, protos out."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import grpc

from cronwire.v1 import calendar_pb2, calendar_service_pb2, calendar_service_pb2_grpc
from cronwire_server.api import convert, fields, scope
from cronwire_server.api.masks import mask_paths, merge
from cronwire_server.api.paging import encode_token, page_from_request
from cronwire_server.api.status import unary
from cronwire_server.core import names
from cronwire_server.core.calendar_manager import CalendarManager
from cronwire_server.core.errors import InvalidArgument
from cronwire_server.core.model import Calendar

Context = grpc.aio.ServicerContext[Any, Any]

MUTABLE = frozenset(
    {
        "description",
        "time_zone",
        "dates",
        "yearly_dates",
        "weekdays",
        "public_holidays",
        "time_ranges",
        "include_calendars",
        "exclude_calendars",
    }
)
OUTPUT_ONLY = frozenset({"name", "create_time", "update_time", "etag"})


class CalendarService(calendar_service_pb2_grpc.CalendarServiceServicer):
    def __init__(self, calendars: CalendarManager) -> None:
        self._calendars = calendars

    @unary
    async def CreateCalendar(
        self, request: calendar_service_pb2.CreateCalendarRequest, context: Context
    ) -> calendar_service_pb2.CreateCalendarResponse:
        namespace = scope.parent(request.parent)
        calendar_id = (
            names.check_id(request.calendar_id, "calendar_id")
            if request.calendar_id
            else names.new_id("calendar")
        )
        request_id = fields.request_id(request.request_id)
        fields.required(request.HasField("calendar"), "calendar")
        with fields.under("calendar"):
            cal = convert.calendar_from_pb(request.calendar, namespace, calendar_id)
            created = await self._calendars.create(
                cal, request_id=request_id, validate_only=request.validate_only
            )
        return calendar_service_pb2.CreateCalendarResponse(calendar=convert.calendar_to_pb(created))

    @unary
    async def GetCalendar(
        self, request: calendar_service_pb2.GetCalendarRequest, context: Context
    ) -> calendar_service_pb2.GetCalendarResponse:
        name = scope.name(request.name, "calendar")
        cal = await self._calendars.get(name.namespace, name.id)
        return calendar_service_pb2.GetCalendarResponse(calendar=convert.calendar_to_pb(cal))

    @unary
    async def ListCalendars(
        self, request: calendar_service_pb2.ListCalendarsRequest, context: Context
    ) -> calendar_service_pb2.ListCalendarsResponse:
        namespace = scope.parent(request.parent)
        filters = {"namespace": namespace}
        page = page_from_request(request.page_size, request.page_token, filters)
        listing = await self._calendars.list_page(namespace, page)
        return calendar_service_pb2.ListCalendarsResponse(
            calendars=[convert.calendar_to_pb(c) for c in listing.items],
            next_page_token=encode_token(listing.next_after, filters),
        )

    @unary
    async def UpdateCalendar(
        self, request: calendar_service_pb2.UpdateCalendarRequest, context: Context
    ) -> calendar_service_pb2.UpdateCalendarResponse:
        fields.required(request.HasField("calendar"), "calendar")
        update = request.calendar
        name = scope.name(update.name, "calendar", "calendar.name")
        mask = request.update_mask if request.HasField("update_mask") else None
        paths = mask_paths(update, mask, mutable=MUTABLE, output_only=OUTPUT_ONLY)

        def change(current: Calendar) -> Calendar:
            merged = convert.calendar_to_pb(current)
            merge(merged, update, paths)
            updated = convert.calendar_from_pb(merged, name.namespace, name.id)
            updated.create_time = current.create_time
            return updated

        with fields.under("calendar"):
            cal = await self._calendars.update(
                name.namespace,
                name.id,
                change,
                expected_etag=update.etag,
                validate_only=request.validate_only,
            )
        return calendar_service_pb2.UpdateCalendarResponse(calendar=convert.calendar_to_pb(cal))

    @unary
    async def DeleteCalendar(
        self, request: calendar_service_pb2.DeleteCalendarRequest, context: Context
    ) -> calendar_service_pb2.DeleteCalendarResponse:
        name = scope.name(request.name, "calendar")
        await self._calendars.delete(name.namespace, name.id, expected_etag=request.etag)
        return calendar_service_pb2.DeleteCalendarResponse()

    @unary
    async def PreviewCalendar(
        self, request: calendar_service_pb2.PreviewCalendarRequest, context: Context
    ) -> calendar_service_pb2.PreviewCalendarResponse:
        source = request.WhichOneof("source")
        year = self._calendars.preview_year(request.year)
        if source == "name":
            name = scope.name(request.name, "calendar")
            cal = await self._calendars.get(name.namespace, name.id)
        elif source == "calendar":
            with fields.under("calendar"):
                named = [*request.calendar.include_calendars, *request.calendar.exclude_calendars]
                # The namespace of the calendars it names (the caller must be allowed to read them).
                namespace = (
                    scope.name(named[0], "calendar", "include_calendars[0]").namespace if named else "preview"
                )
                cal = convert.calendar_from_pb(request.calendar, namespace, "preview")
        else:
            raise InvalidArgument.field(
                "source", "set `name` (a stored calendar) or `calendar` (an unsaved one)"
            )
        with fields.under("calendar") if source == "calendar" else nullcontext():
            year, days = await self._calendars.preview(cal, year)
        return calendar_service_pb2.PreviewCalendarResponse(
            days=[
                calendar_pb2.CalendarDay(
                    date=day.day.isoformat(),
                    time_ranges=[convert.time_range_to_pb(t) for t in day.time_ranges],
                    reason=day.reason,
                )
                for day in days
            ],
            year=year,
            time_zone=cal.time_zone,
        )
