"""Request building shared by the sync and async clients: names, update masks, filters."""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Literal, TypeAlias

from google.protobuf import field_mask_pb2

from cronwire._alerts import CheckIn, NotificationRoute, NotificationRule, alert_kinds
from cronwire._convert import (
    ALL_NAMESPACES,
    dict_to_struct,
    enum_to,
    enums_to,
    parent_name,
    resource_name,
    set_time,
    split_name,
    to_seconds,
)
from cronwire._errors import DeadlineExceeded
from cronwire._types import (
    AllOfTrigger,
    AnyOfTrigger,
    BusinessDayTrigger,
    Calendar,
    CompletionCallback,
    Deadlines,
    EventType,
    Execution,
    ExecutionRetention,
    ExecutionState,
    ExecutionTrigger,
    Job,
    JobDependent,
    MisfirePolicy,
    OverlapPolicy,
    RetryPolicy,
    Schedule,
    Trigger,
    trigger_to_proto,
)
from cronwire.v1 import (
    calendar_service_pb2,
    checkin_service_pb2,
    event_service_pb2,
    execution_service_pb2,
    job_service_pb2,
    notification_service_pb2,
    schedule_pb2,
    schedule_service_pb2,
)


class Unset(enum.Enum):
    """The type of UNSET: "leave this field as it is" in update calls."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.UNSET
"""Default of the fields of `update_job`/`update_schedule`: leave the field as it is."""

Maybe: TypeAlias = Literal[Unset.UNSET]

JobRef: TypeAlias = "str | Job"
ScheduleRef: TypeAlias = "str | Schedule"
CalendarRef: TypeAlias = "str | Calendar"
ExecutionRef: TypeAlias = "str | Execution"

DEFAULT_POLL_INTERVAL = timedelta(milliseconds=500)
RETRIED_STATES = (ExecutionState.FAILED, ExecutionState.TIMED_OUT, ExecutionState.LOST)


def _name(kind: str, ref: Any, namespace: str) -> str:
    if isinstance(ref, Job | Schedule | Execution | Calendar):
        if not ref.name:
            raise ValueError(f"the {kind} has no name; pass a stored {kind} or its name")
        return ref.name
    if not isinstance(ref, str):
        raise TypeError(f"expected a {kind} name or a {kind.capitalize()}, got {type(ref).__name__}")
    return resource_name(kind, ref, namespace)


def _resolved(trigger: Trigger, namespace: str) -> Trigger:
    """`trigger` with the calendars of its business days as full names (ids read in `namespace`)."""
    if isinstance(trigger, BusinessDayTrigger):
        full = resource_name("calendar", trigger.calendar, namespace)
        return dataclasses.replace(trigger, calendar=full)
    if isinstance(trigger, AnyOfTrigger | AllOfTrigger):
        children = [_resolved(t, namespace) for t in trigger.triggers]
        return AnyOfTrigger(children) if isinstance(trigger, AnyOfTrigger) else AllOfTrigger(children)
    return trigger


def _etag(ref: Any, etag: str) -> str:
    if etag:
        return etag
    return ref.etag if isinstance(ref, Job | Schedule | Calendar) else ""


def _mask(values: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    given = {key: value for key, value in values.items() if value is not UNSET}
    if not given:
        raise ValueError("nothing to update: give at least one field")
    return sorted(given), given


class Requests:
    """Builds the request messages of every call, resolving short names in `namespace`."""

    def __init__(self, namespace: str) -> None:
        if not namespace or "/" in namespace:
            raise ValueError(f"namespace must be a plain namespace id, got {namespace!r}")
        self.namespace = namespace

    # Names

    def ns(self, namespace: str | None) -> str:
        return namespace or self.namespace

    def job_name(self, ref: JobRef, namespace: str | None = None) -> str:
        return _name("job", ref, self.ns(namespace))

    def schedule_name(self, ref: ScheduleRef, namespace: str | None = None) -> str:
        return _name("schedule", ref, self.ns(namespace))

    def execution_name(self, ref: ExecutionRef, namespace: str | None = None) -> str:
        return _name("execution", ref, self.ns(namespace))

    def calendar_name(self, ref: CalendarRef, namespace: str | None = None) -> str:
        return _name("calendar", ref, self.ns(namespace))

    def calendar_names(self, refs: Iterable[CalendarRef] | None, namespace: str) -> list[str]:
        return [self.calendar_name(ref, namespace) for ref in refs or ()]

    def parent(self, namespace: str | None) -> str:
        return parent_name(self.ns(namespace))

    # Jobs

    def _dependents(self, dependents: Iterable[JobDependent | str], namespace: str) -> list[JobDependent]:
        resolved = []
        for dependent in dependents:
            item = JobDependent(dependent) if isinstance(dependent, str) else dependent
            resolved.append(JobDependent(resource_name("job", item.job, namespace), item.condition))
        return resolved

    def create_job(
        self,
        job_id: str,
        *,
        namespace: str | None,
        request_id: str,
        executor: str,
        parameters: Mapping[str, Any] | None,
        description: str,
        timeout: timedelta | None,
        retry_policy: RetryPolicy | None,
        max_concurrency: int,
        dependents: Sequence[JobDependent | str],
        callback: CompletionCallback | None,
        labels: Mapping[str, str] | None,
        execution_retention: ExecutionRetention | None,
        arguments_schema: Mapping[str, Any] | None,
    ) -> job_service_pb2.CreateJobRequest:
        ns = self.ns(namespace)
        job = Job(
            executor=executor,
            parameters=dict(parameters or {}),
            description=description,
            timeout=timeout,
            retry_policy=retry_policy,
            max_concurrency=max_concurrency,
            dependents=self._dependents(dependents, ns),
            callback=callback,
            labels=dict(labels or {}),
            execution_retention=execution_retention,
            arguments_schema=None if arguments_schema is None else dict(arguments_schema),
        )
        return job_service_pb2.CreateJobRequest(
            parent=parent_name(ns), job_id=job_id, job=job._to_proto(), request_id=request_id
        )

    def update_job(
        self, ref: JobRef, etag: str, fields: Mapping[str, Any]
    ) -> job_service_pb2.UpdateJobRequest:
        name = self.job_name(ref)
        paths, given = _mask(fields)
        job = Job(name=name, etag=_etag(ref, etag))
        for key, value in given.items():
            if key == "dependents":
                value = self._dependents(value or (), split_name(name)[0] or self.namespace)
            elif key in ("parameters", "labels"):
                value = dict(value or {})
            elif key == "arguments_schema":
                value = None if value is None else dict(value)
            elif key in ("executor", "description"):
                value = value or ""
            elif key == "max_concurrency":
                value = value or 0
            setattr(job, key, value)
        return job_service_pb2.UpdateJobRequest(
            job=job._to_proto(), update_mask=field_mask_pb2.FieldMask(paths=paths)
        )

    def run_job(
        self, ref: JobRef, arguments: Mapping[str, Any] | None, request_id: str
    ) -> job_service_pb2.RunJobRequest:
        request = job_service_pb2.RunJobRequest(name=self.job_name(ref), request_id=request_id)
        dict_to_struct(arguments, request.arguments)
        return request

    # Schedules

    def create_schedule(
        self,
        schedule_id: str,
        *,
        namespace: str | None,
        request_id: str,
        job: JobRef,
        trigger: Trigger,
        time_zone: str,
        description: str,
        start_time: datetime | None,
        end_time: datetime | None,
        jitter: timedelta | None,
        misfire_policy: MisfirePolicy | None,
        catchup_window: timedelta | None,
        overlap_policy: OverlapPolicy | None,
        paused: bool,
        arguments: Mapping[str, Any] | None,
        exclude_calendars: Iterable[CalendarRef] | None = None,
        only_on_calendars: Iterable[CalendarRef] | None = None,
        deadlines: Deadlines | None = None,
    ) -> schedule_service_pb2.CreateScheduleRequest:
        job_ns = split_name(job.name if isinstance(job, Job) else job)[0]
        ns = namespace or job_ns or self.namespace
        schedule = Schedule(
            job=self.job_name(job, ns),
            trigger=_resolved(trigger, ns),
            description=description,
            time_zone=time_zone,
            start_time=start_time,
            end_time=end_time,
            jitter=jitter,
            misfire_policy=misfire_policy,
            catchup_window=catchup_window,
            overlap_policy=overlap_policy,
            paused=paused,
            arguments=dict(arguments or {}),
            exclude_calendars=self.calendar_names(exclude_calendars, ns),
            only_on_calendars=self.calendar_names(only_on_calendars, ns),
            deadlines=deadlines,
        )
        return schedule_service_pb2.CreateScheduleRequest(
            parent=parent_name(ns),
            schedule_id=schedule_id,
            schedule=schedule._to_proto(),
            request_id=request_id,
        )

    def update_schedule(
        self, ref: ScheduleRef, etag: str, fields: Mapping[str, Any]
    ) -> schedule_service_pb2.UpdateScheduleRequest:
        paths, given = _mask(fields)
        schedule = Schedule(name=self.schedule_name(ref), etag=_etag(ref, etag))
        for key, value in given.items():
            if key == "arguments":
                value = dict(value or {})
            elif key in ("time_zone", "description"):
                value = value or ""
            elif key in ("exclude_calendars", "only_on_calendars"):
                value = self.calendar_names(value, split_name(schedule.name)[0] or self.namespace)
            elif key == "trigger" and value is not None:
                value = _resolved(value, split_name(schedule.name)[0] or self.namespace)
            setattr(schedule, key, value)
        return schedule_service_pb2.UpdateScheduleRequest(
            schedule=schedule._to_proto(), update_mask=field_mask_pb2.FieldMask(paths=paths)
        )

    def backfill(
        self,
        ref: ScheduleRef,
        *,
        start_time: datetime,
        end_time: datetime,
        overlap_policy: OverlapPolicy | None,
        max_concurrency: int,
        dry_run: bool,
        request_id: str,
    ) -> schedule_service_pb2.BackfillScheduleRequest:
        request = schedule_service_pb2.BackfillScheduleRequest(
            name=self.schedule_name(ref),
            overlap_policy=enum_to(overlap_policy),
            max_concurrency=max_concurrency,
            dry_run=dry_run,
            request_id=request_id,
        )
        set_time(request.start_time, start_time)
        set_time(request.end_time, end_time)
        return request

    def preview(
        self,
        schedule: ScheduleRef | None,
        *,
        trigger: Trigger | None,
        time_zone: str,
        start_time: datetime | None,
        end_time: datetime | None,
        count: int,
        after_time: datetime | None,
    ) -> schedule_service_pb2.PreviewScheduleRequest:
        request = schedule_service_pb2.PreviewScheduleRequest(count=count)
        if after_time is not None:
            set_time(request.after_time, after_time)
        if isinstance(schedule, str):
            if trigger is not None:
                raise ValueError("give a stored schedule's name or a trigger, not both")
            request.name = self.schedule_name(schedule)
            return request
        if schedule is None:
            if trigger is None:
                raise ValueError("give a stored schedule's name, a Schedule or a trigger")
            schedule = Schedule(
                trigger=trigger, time_zone=time_zone, start_time=start_time, end_time=end_time
            )
        ns = split_name(schedule.job)[0] or schedule.namespace or self.namespace
        spec = schedule_pb2.Schedule(
            time_zone=schedule.time_zone,
            job=schedule.job,
            exclude_calendars=self.calendar_names(schedule.exclude_calendars, ns),
            only_on_calendars=self.calendar_names(schedule.only_on_calendars, ns),
        )
        if schedule.trigger is not None:
            spec.trigger.CopyFrom(trigger_to_proto(_resolved(schedule.trigger, ns)))
        if schedule.start_time is not None:
            set_time(spec.start_time, schedule.start_time)
        if schedule.end_time is not None:
            set_time(spec.end_time, schedule.end_time)
        request.schedule.CopyFrom(spec)
        return request

    # Calendars

    def create_calendar(
        self,
        calendar_id: str,
        calendar: Calendar,
        *,
        namespace: str | None,
        request_id: str,
        validate_only: bool,
    ) -> calendar_service_pb2.CreateCalendarRequest:
        ns = namespace or calendar.namespace or self.namespace
        message = calendar._to_proto()
        message.ClearField("include_calendars")
        message.ClearField("exclude_calendars")
        message.include_calendars.extend(self.calendar_names(calendar.include_calendars, ns))
        message.exclude_calendars.extend(self.calendar_names(calendar.exclude_calendars, ns))
        return calendar_service_pb2.CreateCalendarRequest(
            parent=parent_name(ns),
            calendar_id=calendar_id or calendar.id,
            calendar=message,
            request_id=request_id,
            validate_only=validate_only,
        )

    def update_calendar(
        self, ref: CalendarRef, etag: str, fields: Mapping[str, Any]
    ) -> calendar_service_pb2.UpdateCalendarRequest:
        name = self.calendar_name(ref)
        paths, given = _mask(fields)
        calendar = Calendar(name=name, etag=_etag(ref, etag))
        ns = split_name(name)[0] or self.namespace
        for key, value in given.items():
            if key in ("include_calendars", "exclude_calendars"):
                value = self.calendar_names(value, ns)
            elif key in ("description", "time_zone"):
                value = value or ""
            else:
                value = list(value or ())
            setattr(calendar, key, value)
        return calendar_service_pb2.UpdateCalendarRequest(
            calendar=calendar._to_proto(), update_mask=field_mask_pb2.FieldMask(paths=paths)
        )

    # Alerts

    def update_notification_route(
        self, name: str, etag: str, fields: Mapping[str, Any]
    ) -> notification_service_pb2.UpdateNotificationRouteRequest:
        paths, given = _mask(fields)
        route = NotificationRoute(name=name, etag=etag)
        for key, value in given.items():
            if key == "destination":
                if value is None:
                    raise ValueError("a route needs a destination")
                route.destination = value
            elif key == "description":
                route.description = value or ""
            else:
                route.max_per_hour = value or 0
        message = route._to_proto()
        # The destination is a oneof: the mask names the member given, which replaces the current one.
        member = message.WhichOneof("destination") or "destination"
        masked = sorted(member if path == "destination" else path for path in paths)
        return notification_service_pb2.UpdateNotificationRouteRequest(
            route=message, update_mask=field_mask_pb2.FieldMask(paths=masked)
        )

    def update_notification_rule(
        self, name: str, etag: str, fields: Mapping[str, Any]
    ) -> notification_service_pb2.UpdateNotificationRuleRequest:
        paths, given = _mask(fields)
        rule = NotificationRule(name=name, etag=etag)
        ns = split_name(name)[0] or self.namespace
        for key, value in given.items():
            if key == "route":
                ref = value.name if isinstance(value, NotificationRoute) else value
                rule.route = resource_name("route", ref, ns)
            elif key == "kinds":
                rule.kinds = alert_kinds(value or ())
            elif key == "job":
                rule.job = self.job_name(value, ns) if value is not None else ""
            elif key == "schedule":
                rule.schedule = self.schedule_name(value, ns) if value is not None else ""
            elif key == "labels":
                rule.labels = dict(value or {})
            else:
                rule.description = value or ""
        return notification_service_pb2.UpdateNotificationRuleRequest(
            rule=rule._to_proto(), update_mask=field_mask_pb2.FieldMask(paths=paths)
        )

    def update_check_in(
        self, name: str, etag: str, fields: Mapping[str, Any]
    ) -> checkin_service_pb2.UpdateCheckInRequest:
        paths, given = _mask(fields)
        check_in = CheckIn(name=name, etag=etag)
        for key, value in given.items():
            if key in ("description", "time_zone"):
                value = value or ""
            elif key == "labels":
                value = dict(value or {})
            setattr(check_in, key, value)
        return checkin_service_pb2.UpdateCheckInRequest(
            check_in=check_in._to_proto(), update_mask=field_mask_pb2.FieldMask(paths=paths)
        )

    # Executions

    def list_executions(
        self,
        *,
        namespace: str | None,
        job: JobRef | None,
        schedule: ScheduleRef | None,
        states: Iterable[ExecutionState],
        start_time: datetime | None,
        end_time: datetime | None,
        page_size: int,
        page_token: str,
    ) -> execution_service_pb2.ListExecutionsRequest:
        request = execution_service_pb2.ListExecutionsRequest(
            parent=self.parent(namespace),
            page_size=page_size,
            page_token=page_token,
            job=self.job_name(job, namespace) if job is not None else "",
            schedule=self.schedule_name(schedule, namespace) if schedule is not None else "",
            states=enums_to(states),
        )
        if start_time is not None:
            set_time(request.start_time, start_time)
        if end_time is not None:
            set_time(request.end_time, end_time)
        return request

    def retry_lookup(self, execution: Execution) -> execution_service_pb2.ListExecutionsRequest | None:
        """The listing that holds the retry of an ended attempt, if one may have been queued.

        The server queues a retry in the transaction that records the failure, scheduled at or
        after the failure's end, so it is among the job's executions scheduled since then.
        """
        if execution.state not in RETRIED_STATES or execution.end_time is None or not execution.job:
            return None
        request = execution_service_pb2.ListExecutionsRequest(
            parent=parent_name(split_name(execution.name)[0] or self.namespace),
            job=execution.job,
            page_size=100,
        )
        set_time(request.start_time, execution.end_time - timedelta(seconds=1))
        return request

    # Events

    def event_parent(self, namespace: str | None) -> str:
        if namespace == ALL_NAMESPACES:
            return parent_name(ALL_NAMESPACES)
        return self.parent(namespace)

    def list_events(
        self,
        *,
        namespace: str | None,
        after_sequence: int,
        job: JobRef | None,
        schedule: ScheduleRef | None,
        event_types: Iterable[EventType],
        page_size: int,
        page_token: str,
    ) -> event_service_pb2.ListEventsRequest:
        ns = None if namespace == ALL_NAMESPACES else namespace
        return event_service_pb2.ListEventsRequest(
            parent=self.event_parent(namespace),
            page_size=page_size,
            page_token=page_token,
            after_sequence=after_sequence,
            job=self.job_name(job, ns) if job is not None else "",
            schedule=self.schedule_name(schedule, ns) if schedule is not None else "",
            event_types=enums_to(event_types),
        )

    def watch_events(
        self,
        *,
        namespace: str | None,
        after_sequence: int,
        job: JobRef | None,
        schedule: ScheduleRef | None,
        event_types: Iterable[EventType],
    ) -> event_service_pb2.WatchEventsRequest:
        ns = None if namespace == ALL_NAMESPACES else namespace
        return event_service_pb2.WatchEventsRequest(
            parent=self.event_parent(namespace),
            after_sequence=after_sequence,
            job=self.job_name(job, ns) if job is not None else "",
            schedule=self.schedule_name(schedule, ns) if schedule is not None else "",
            event_types=enums_to(event_types),
        )


def find_retry(executions: Iterable[Execution], ended: Execution) -> Execution | None:
    """The attempt that retries `ended`, among `executions`."""
    for candidate in executions:
        if candidate.trigger is ExecutionTrigger.RETRY and candidate.parent_execution == ended.name:
            return candidate
    return None


class Waiter:
    """The clock of a wait for an execution: poll interval and overall deadline."""

    def __init__(self, poll_interval: timedelta | float, timeout: timedelta | float | None) -> None:
        interval = to_seconds(poll_interval)
        if interval is None or interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
        self.interval = interval
        limit = to_seconds(timeout)
        self.deadline = None if limit is None else time.monotonic() + limit
        self.timeout = limit

    def next_sleep(self, execution: Execution) -> float:
        """Seconds to sleep before the next poll; DeadlineExceeded once the wait is over."""
        if self.deadline is None:
            return self.interval
        left = self.deadline - time.monotonic()
        if left <= 0:
            state = execution.state.name if execution.state is not None else "UNKNOWN"
            raise DeadlineExceeded(
                f"execution {execution.name} is still {state} after {self.timeout:g}s",
                reason="WAIT_TIMEOUT",
            )
        return min(self.interval, left)


class Reconnect:
    """Backoff between the reconnects of a stream: 0.1 s doubling up to 5 s, reset by progress."""

    INITIAL = 0.1
    MAXIMUM = 5.0

    def __init__(self) -> None:
        self.delay = self.INITIAL
        self.retrying = False

    def progressed(self) -> None:
        self.delay = self.INITIAL

    def next_delay(self) -> float:
        self.retrying = True
        delay = self.delay
        self.delay = min(self.delay * 2, self.MAXIMUM)
        return delay
