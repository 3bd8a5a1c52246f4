"""cronwire.v1.ScheduleService: protos in, domain calls, protos out."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from cronwire.v1 import schedule_pb2, schedule_service_pb2, schedule_service_pb2_grpc
from cronwire_server.api import convert, fields, scope
from cronwire_server.api.masks import mask_paths, merge
from cronwire_server.api.paging import encode_token, page_from_request
from cronwire_server.api.status import unary
from cronwire_server.core import names
from cronwire_server.core.errors import InvalidArgument
from cronwire_server.core.model import OverlapPolicy, Schedule
from cronwire_server.core.schedules import ScheduleManager

Context = grpc.aio.ServicerContext[Any, Any]

MUTABLE = frozenset(
    {
        "description",
        "trigger",
        "time_zone",
        "start_time",
        "end_time",
        "jitter",
        "misfire_policy",
        "catchup_window",
        "overlap_policy",
        "arguments",
        "exclude_calendars",
        "deadlines",
        "only_on_calendars",
    }
)
OUTPUT_ONLY = frozenset(
    {"name", "next_fire_time", "create_time", "update_time", "etag", "pause_reason", "stats"}
)


def _schedule_pb(schedule: Schedule) -> schedule_pb2.Schedule:
    message = convert.schedule_to_pb(schedule)
    if schedule.paused:
        # Stored for the misfire policy on resume, but a paused schedule fires at no time.
        message.ClearField("next_fire_time")
    return message


def _trigger_calendars(trigger: schedule_pb2.Trigger, path: str) -> list[tuple[str, str]]:
    """(field, calendar name) of each business day's calendar in a trigger message."""
    kind = trigger.WhichOneof("kind")
    if kind == "business_day" and trigger.business_day.calendar:
        return [(f"{path}.business_day.calendar", trigger.business_day.calendar)]
    if kind in ("any_of", "all_of"):
        children = getattr(trigger, kind).triggers
        return [
            ref
            for i, child in enumerate(children)
            for ref in _trigger_calendars(child, f"{path}.{kind}.triggers[{i}]")
        ]
    return []


class ScheduleService(schedule_service_pb2_grpc.ScheduleServiceServicer):
    def __init__(
        self,
        schedules: ScheduleManager,
        deadline_misses: Callable[[str, str], Awaitable[int]] | None = None,
    ) -> None:
        self._schedules = schedules
        # (namespace, schedule id) -> the deadlines its ticks missed; read for schedules with
        # deadlines only, so the others' reads are as before.
        self._deadline_misses = deadline_misses

    @unary
    async def CreateSchedule(
        self, request: schedule_service_pb2.CreateScheduleRequest, context: Context
    ) -> schedule_service_pb2.CreateScheduleResponse:
        namespace = scope.parent(request.parent)
        schedule_id = (
            names.check_id(request.schedule_id, "schedule_id")
            if request.schedule_id
            else names.new_id("schedule")
        )
        request_id = fields.request_id(request.request_id)
        fields.required(request.HasField("schedule"), "schedule")
        with fields.under("schedule"):
            schedule = convert.schedule_from_pb(request.schedule, namespace, schedule_id)
            created = await self._schedules.create(
                schedule, request_id=request_id, validate_only=request.validate_only
            )
        return schedule_service_pb2.CreateScheduleResponse(schedule=_schedule_pb(created))

    @unary
    async def GetSchedule(
        self, request: schedule_service_pb2.GetScheduleRequest, context: Context
    ) -> schedule_service_pb2.GetScheduleResponse:
        name = scope.name(request.name, "schedule")
        schedule = await self._schedules.get(name.namespace, name.id, with_stats=True)
        if schedule.deadlines and schedule.stats is not None and self._deadline_misses is not None:
            missed = await self._deadline_misses(name.namespace, name.id)
            schedule.stats = dataclasses.replace(schedule.stats, deadlines_missed=missed)
        return schedule_service_pb2.GetScheduleResponse(schedule=_schedule_pb(schedule))

    @unary
    async def ListSchedules(
        self, request: schedule_service_pb2.ListSchedulesRequest, context: Context
    ) -> schedule_service_pb2.ListSchedulesResponse:
        namespace = scope.parent(request.parent)
        job_id = ""
        if request.job:
            job = names.parse_name(request.job, "job", "job")
            if job.namespace != namespace:
                raise InvalidArgument.field("job", "must be a job of the listed namespace")
            job_id = job.id
        filters = {"namespace": namespace, "job": job_id}
        page = page_from_request(request.page_size, request.page_token, filters)
        listing = await self._schedules.list_page(namespace, page, job_id=job_id)
        return schedule_service_pb2.ListSchedulesResponse(
            schedules=[_schedule_pb(s) for s in listing.items],
            next_page_token=encode_token(listing.next_after, filters),
        )

    @unary
    async def UpdateSchedule(
        self, request: schedule_service_pb2.UpdateScheduleRequest, context: Context
    ) -> schedule_service_pb2.UpdateScheduleResponse:
        fields.required(request.HasField("schedule"), "schedule")
        update = request.schedule
        name = scope.name(update.name, "schedule", "schedule.name")
        mask = request.update_mask if request.HasField("update_mask") else None
        if mask is not None and any(p.split(".")[0] in ("job", "paused") for p in mask.paths):
            raise InvalidArgument.field(
                "update_mask",
                "job cannot be changed, and paused changes through PauseSchedule/ResumeSchedule",
            )
        paths = mask_paths(update, mask, mutable=MUTABLE, output_only=OUTPUT_ONLY)

        def change(current: Schedule) -> Schedule:
            merged = _schedule_pb(current)
            if update.job and update.job != merged.job:
                raise InvalidArgument.field("job", "cannot be changed; create a new schedule")
            merge(merged, update, paths)
            updated = convert.schedule_from_pb(merged, name.namespace, name.id)
            # Stored-only state the message does not carry.
            updated.paused, updated.next_fire_time = current.paused, current.next_fire_time
            updated.create_time, updated.resumed_at = current.create_time, current.resumed_at
            return updated

        with fields.under("schedule"):
            schedule = await self._schedules.update(
                name.namespace,
                name.id,
                change,
                expected_etag=update.etag,
                validate_only=request.validate_only,
            )
        return schedule_service_pb2.UpdateScheduleResponse(schedule=_schedule_pb(schedule))

    @unary
    async def DeleteSchedule(
        self, request: schedule_service_pb2.DeleteScheduleRequest, context: Context
    ) -> schedule_service_pb2.DeleteScheduleResponse:
        name = scope.name(request.name, "schedule")
        await self._schedules.delete(name.namespace, name.id, expected_etag=request.etag)
        return schedule_service_pb2.DeleteScheduleResponse()

    @unary
    async def PauseSchedule(
        self, request: schedule_service_pb2.PauseScheduleRequest, context: Context
    ) -> schedule_service_pb2.PauseScheduleResponse:
        name = scope.name(request.name, "schedule")
        schedule = await self._schedules.pause(name.namespace, name.id, request.reason)
        return schedule_service_pb2.PauseScheduleResponse(schedule=_schedule_pb(schedule))

    @unary
    async def ResumeSchedule(
        self, request: schedule_service_pb2.ResumeScheduleRequest, context: Context
    ) -> schedule_service_pb2.ResumeScheduleResponse:
        name = scope.name(request.name, "schedule")
        schedule = await self._schedules.resume(name.namespace, name.id)
        return schedule_service_pb2.ResumeScheduleResponse(schedule=_schedule_pb(schedule))

    @unary
    async def BackfillSchedule(
        self, request: schedule_service_pb2.BackfillScheduleRequest, context: Context
    ) -> schedule_service_pb2.BackfillScheduleResponse:
        name = scope.name(request.name, "schedule")
        fields.required(request.HasField("start_time"), "start_time")
        fields.required(request.HasField("end_time"), "end_time")
        overlap = convert.overlap_from_pb(request.overlap_policy, default=OverlapPolicy.ALLOW_ALL)
        times, executions = await self._schedules.backfill(
            name.namespace,
            name.id,
            convert.time_from_pb(request.start_time, "start_time"),
            convert.time_from_pb(request.end_time, "end_time"),
            overlap_policy=overlap,
            max_concurrency=request.max_concurrency,
            dry_run=request.dry_run,
            request_id=fields.request_id(request.request_id),
        )
        return schedule_service_pb2.BackfillScheduleResponse(
            fire_times=[convert.fire_time_to_pb(t, name.namespace) for t in times],
            executions=[names.format_name("execution", e.namespace, e.id) for e in executions],
        )

    @unary
    async def PreviewSchedule(
        self, request: schedule_service_pb2.PreviewScheduleRequest, context: Context
    ) -> schedule_service_pb2.PreviewScheduleResponse:
        count = self._schedules.preview_count(request.count)
        after = convert.optional_time(request, "after_time")
        source = request.WhichOneof("source")
        if source == "name":
            name = scope.name(request.name, "schedule")
            schedule = await self._schedules.get(name.namespace, name.id)
            times = await self._schedules.preview(schedule, after, count)
        elif source == "schedule":
            with fields.under("schedule"):
                # An unsaved spec needs no job; a placeholder keeps the converter's checks on the rest.
                spec = schedule_pb2.Schedule()
                spec.CopyFrom(request.schedule)
                references = [
                    *((f"exclude_calendars[{i}]", v) for i, v in enumerate(spec.exclude_calendars)),
                    *((f"only_on_calendars[{i}]", v) for i, v in enumerate(spec.only_on_calendars)),
                    *_trigger_calendars(spec.trigger, "trigger"),
                ]
                named = [value for _, value in references]
                for field, value in references:
                    # Their namespace's calendars are read: the caller must be allowed to.
                    scope.name(value, "calendar", field)
                if not spec.job and named:
                    spec.job = f"{named[0].rpartition('/calendars/')[0]}/jobs/preview"
                spec.job = spec.job or "namespaces/preview/jobs/preview"
                # The job's namespace, so that it passes the same-namespace check; a job that is
                # not a name at all is reported by the converter.
                parts = spec.job.split("/")
                namespace = parts[1] if len(parts) > 1 else "preview"
                schedule = convert.schedule_from_pb(spec, namespace, "preview")
                times = await self._schedules.preview(schedule, after, count)
        else:
            raise InvalidArgument.field(
                "source", "set `name` (a stored schedule) or `schedule` (an unsaved one)"
            )
        return schedule_service_pb2.PreviewScheduleResponse(
            fire_times=[convert.fire_time_to_pb(t, schedule.namespace) for t in times],
            time_zone=schedule.time_zone,
        )
