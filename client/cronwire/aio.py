"""The asyncio client (grpc.aio): the same methods as `Client`, as coroutines and async iterators."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import grpc

from cronwire import _channel
from cronwire._alerts import (
    AlertKind,
    CheckIn,
    CheckInPingKind,
    CreatedCheckIn,
    Destination,
    Incident,
    NotificationDelivery,
    NotificationRoute,
    NotificationRule,
    alert_kinds,
)
from cronwire._channel import DEFAULT_NAMESPACE, DEFAULT_TARGET, DEFAULT_TIMEOUT, TLSConfig
from cronwire._convert import enum_to, resource_name
from cronwire._errors import from_rpc_error
from cronwire._keys import CreatedKey, Key, Role, create_request, key_name
from cronwire._requests import (
    DEFAULT_POLL_INTERVAL,
    UNSET,
    CalendarRef,
    ExecutionRef,
    JobRef,
    Maybe,
    Reconnect,
    Requests,
    ScheduleRef,
    Waiter,
    find_retry,
)
from cronwire._stream import LogCursor, WatchCursor, resumable
from cronwire._types import (
    BackfillResult,
    Calendar,
    CalendarPreview,
    ClusterStatus,
    CompletionCallback,
    DateRange,
    Deadlines,
    Event,
    EventType,
    Execution,
    ExecutionRetention,
    ExecutionState,
    Job,
    JobDependent,
    JobType,
    LogChunk,
    MisfirePolicy,
    Namespace,
    OverlapPolicy,
    Page,
    PublicHolidays,
    RetryPolicy,
    Schedule,
    SchedulePreview,
    TimeRange,
    Trigger,
    Weekday,
    YearlyDate,
)
from cronwire._version import __version__
from cronwire.v1 import (
    calendar_service_pb2,
    calendar_service_pb2_grpc,
    checkin_service_pb2,
    checkin_service_pb2_grpc,
    cluster_service_pb2,
    cluster_service_pb2_grpc,
    event_service_pb2,
    event_service_pb2_grpc,
    execution_service_pb2,
    execution_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
    key_service_pb2,
    key_service_pb2_grpc,
    notification_service_pb2,
    notification_service_pb2_grpc,
    schedule_service_pb2,
    schedule_service_pb2_grpc,
)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
T = TypeVar("T")


def _user_agent() -> str:
    return f"cronwire-python/{__version__}"


class AsyncClient:
    """An asyncio connection to a cronwire server (grpc.aio); create it inside a running loop.

    Short names (`backup`) are read in `namespace`; full names
    (`namespaces/ops/jobs/backup`) are used as they are. Every call gets the default
    deadline `timeout`, except the streams (`watch`, `logs`) and waits. Read calls are
    retried on UNAVAILABLE by the channel (`retry_reads`); writes never are. Failed
    calls raise `CronwireError` subclasses.

    Use it as an async context manager, or `await close()`.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        tls: bool | TLSConfig = False,
        token: str | None = None,
        timeout: timedelta | float | None = DEFAULT_TIMEOUT,
        retry_reads: bool = True,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Open a channel to `target` (`host:port`).

        Args:
            target: the server's address.
            namespace: where short names are read and lists look by default.
            tls: False for plaintext, True for TLS with the system's CAs, or a `TLSConfig`
                (own CA, client certificate for mutual TLS).
            token: sent as `authorization: Bearer <token>` with every call.
            timeout: the default deadline of every unary call (seconds or timedelta); None
                for none.
            retry_reads: retry read calls on UNAVAILABLE (up to 5 attempts, with backoff).
            channel_options: extra gRPC channel options.
        """
        self._requests = Requests(namespace)
        self._timeout = _channel.deadline(timeout)
        self._metadata = _channel.call_metadata(token)
        tls_config = _channel.tls_config(tls)
        options = _channel.channel_options(
            user_agent=_user_agent(), retry_reads=retry_reads, tls=tls_config, extra=channel_options
        )
        if tls_config is None:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(target, tls_config.credentials(), options=options)
        self._jobs = job_service_pb2_grpc.JobServiceStub(self._channel)
        self._schedules = schedule_service_pb2_grpc.ScheduleServiceStub(self._channel)
        self._calendars = calendar_service_pb2_grpc.CalendarServiceStub(self._channel)
        self._executions = execution_service_pb2_grpc.ExecutionServiceStub(self._channel)
        self._events = event_service_pb2_grpc.EventServiceStub(self._channel)
        self._cluster = cluster_service_pb2_grpc.ClusterServiceStub(self._channel)
        self._keys = key_service_pb2_grpc.KeyServiceStub(self._channel)
        self._alerts = notification_service_pb2_grpc.NotificationServiceStub(self._channel)
        self._check_ins = checkin_service_pb2_grpc.CheckInServiceStub(self._channel)
        self.target = target

    @property
    def namespace(self) -> str:
        """The namespace short names are read in."""
        return self._requests.namespace

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close(grace=None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _call(self, method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], request: Req) -> Resp:
        try:
            return await method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    async def _pages(self, fetch: Callable[[str], Awaitable[Page[T]]]) -> AsyncIterator[T]:
        token = ""
        while True:
            page = await fetch(token)
            for item in page.items:
                yield item
            token = page.next_page_token
            if not token:
                return

    # Jobs

    async def create_job(
        self,
        job_id: str = "",
        *,
        executor: str,
        parameters: Mapping[str, Any] | None = None,
        description: str = "",
        timeout: timedelta | None = None,  # noqa: ASYNC109 - the job's field
        retry_policy: RetryPolicy | None = None,
        max_concurrency: int = 0,
        dependents: Sequence[JobDependent | str] = (),
        callback: CompletionCallback | None = None,
        labels: Mapping[str, str] | None = None,
        execution_retention: ExecutionRetention | None = None,
        arguments_schema: Mapping[str, Any] | None = None,
        namespace: str | None = None,
        request_id: str = "",
        validate_only: bool = False,
    ) -> Job:
        """Create a job and return it as stored.

        `job_id` is the last part of its name (lowercase letters, digits, hyphens; a random
        one when empty). `executor` is a kind from `list_job_types()` and `parameters` must
        match its schema, e.g. `executor="shell", parameters={"argv": ["echo", "hi"]}`.
        `dependents` are job ids or names (or `JobDependent`s with a condition) triggered
        when an execution ends. `execution_retention` keeps this job's finished executions
        by its own rules instead of the server's. `arguments_schema`, a JSON Schema (draft
        2020-12) for the arguments of its runs, makes the job a template: RunJob and schedules
        refuse arguments that do not match it, and each top-level property's `default` that
        the arguments lack is filled in. A repeated `request_id` returns the first call's job.
        Raises AlreadyExists if the id is taken, InvalidArgument naming each bad field.
        With `validate_only` the server checks everything (permissions and references too)
        and returns the job it would have stored, but stores nothing.
        """
        request = self._requests.create_job(
            job_id,
            namespace=namespace,
            request_id=request_id,
            executor=executor,
            parameters=parameters,
            description=description,
            timeout=timeout,
            retry_policy=retry_policy,
            max_concurrency=max_concurrency,
            dependents=dependents,
            callback=callback,
            labels=labels,
            execution_retention=execution_retention,
            arguments_schema=arguments_schema,
        )
        request.validate_only = validate_only
        return Job._from_proto((await self._call(self._jobs.CreateJob, request)).job)

    async def get_job(self, job: JobRef) -> Job:
        """Get a job by id, name or `Job`. Raises NotFound."""
        request = job_service_pb2.GetJobRequest(name=self._requests.job_name(job))
        return Job._from_proto((await self._call(self._jobs.GetJob, request)).job)

    async def list_jobs(
        self, *, executor: str = "", page_size: int = 0, page_token: str = "", namespace: str | None = None
    ) -> Page[Job]:
        """One page of the jobs of a namespace, in id order (optionally of one executor kind).

        `page_size` 0 means the server's default (50); pass the page's `next_page_token`
        as `page_token` for the next one. `iter_jobs` does that for you.
        """
        request = job_service_pb2.ListJobsRequest(
            parent=self._requests.parent(namespace),
            executor=executor,
            page_size=page_size,
            page_token=page_token,
        )
        response = await self._call(self._jobs.ListJobs, request)
        return Page([Job._from_proto(j) for j in response.jobs], response.next_page_token)

    def iter_jobs(
        self, *, executor: str = "", page_size: int = 0, namespace: str | None = None
    ) -> AsyncIterator[Job]:
        """Every job of a namespace, fetched a page at a time as the iteration goes."""
        return self._pages(
            lambda token: self.list_jobs(
                executor=executor, page_size=page_size, page_token=token, namespace=namespace
            )
        )

    async def update_job(
        self,
        job: JobRef,
        *,
        executor: Maybe | str = UNSET,
        parameters: Maybe | Mapping[str, Any] = UNSET,
        description: Maybe | str = UNSET,
        timeout: Maybe | timedelta | None = UNSET,  # noqa: ASYNC109 - the job's field
        retry_policy: Maybe | RetryPolicy | None = UNSET,
        max_concurrency: Maybe | int = UNSET,
        dependents: Maybe | Sequence[JobDependent | str] = UNSET,
        callback: Maybe | CompletionCallback | None = UNSET,
        labels: Maybe | Mapping[str, str] = UNSET,
        execution_retention: Maybe | ExecutionRetention | None = UNSET,
        arguments_schema: Maybe | Mapping[str, Any] | None = UNSET,
        etag: str = "",
        validate_only: bool = False,
    ) -> Job:
        """Change the fields given (the others stay as they are) and return the job as stored.

        `None` clears a field (`timeout=None`: no timeout; `arguments_schema=None`: any
        arguments). With `etag` (by default the etag of a `Job` passed as `job`), the update
        applies only if the job did not change since; otherwise it raises Conflict. With
        `validate_only` the server checks the update and returns the job as it would be, but
        stores nothing.
        """
        fields = {
            "executor": executor,
            "parameters": parameters,
            "description": description,
            "timeout": timeout,
            "retry_policy": retry_policy,
            "max_concurrency": max_concurrency,
            "dependents": dependents,
            "callback": callback,
            "labels": labels,
            "execution_retention": execution_retention,
            "arguments_schema": arguments_schema,
        }
        request = self._requests.update_job(job, etag, fields)
        request.validate_only = validate_only
        return Job._from_proto((await self._call(self._jobs.UpdateJob, request)).job)

    async def delete_job(self, job: JobRef, *, etag: str = "") -> None:
        """Delete a job and its schedules (past executions are kept).

        With `etag` (by default that of a `Job` passed as `job`) it raises Conflict if the
        job changed since.
        """
        request = job_service_pb2.DeleteJobRequest(
            name=self._requests.job_name(job), etag=etag or (job.etag if isinstance(job, Job) else "")
        )
        await self._call(self._jobs.DeleteJob, request)

    async def run_job(
        self,
        job: JobRef,
        *,
        arguments: Mapping[str, Any] | None = None,
        request_id: str = "",
        respect_overlap: bool = False,
    ) -> Execution:
        """Queue an execution of a job now and return it (QUEUED).

        A repeated `request_id` returns the first call's execution instead of a new one. With
        `respect_overlap`, while a run of one of the job's schedules with overlap policy SKIP
        is queued or running, the run is recorded SKIPPED (skip reason OVERLAP) and returned.
        """
        request = self._requests.run_job(job, arguments, request_id)
        request.respect_overlap = respect_overlap
        return Execution._from_proto((await self._call(self._jobs.RunJob, request)).execution)

    async def run(
        self,
        job: JobRef,
        *,
        arguments: Mapping[str, Any] | None = None,
        wait: bool = True,
        poll_interval: timedelta | float = DEFAULT_POLL_INTERVAL,
        wait_timeout: timedelta | float | None = None,
        follow_retries: bool = True,
        request_id: str = "",
        on_attempt: Callable[[Execution, Execution | None], object] | None = None,
        respect_overlap: bool = False,
    ) -> Execution:
        """Run a job now; with `wait`, return the execution once it has ended.

        The wait polls `get_execution` every `poll_interval`. With `follow_retries`, a failed
        attempt that the job's retry policy retries is followed to its last attempt. Raises
        DeadlineExceeded if `wait_timeout` passes first. Without `wait`, it is `run_job`.
        `on_attempt` is called with each attempt as it ends, the last one included (see
        `wait_for_execution`). `respect_overlap` is `run_job`'s.
        """
        execution = await self.run_job(
            job, arguments=arguments, request_id=request_id, respect_overlap=respect_overlap
        )
        if not wait:
            return execution
        return await self.wait_for_execution(
            execution,
            poll_interval=poll_interval,
            wait_timeout=wait_timeout,
            follow_retries=follow_retries,
            on_attempt=on_attempt,
        )

    async def list_job_types(self) -> list[JobType]:
        """The executor kinds this server runs, each with the JSON schema of its parameters."""
        response = await self._call(self._jobs.ListJobTypes, job_service_pb2.ListJobTypesRequest())
        return [JobType._from_proto(t) for t in response.job_types]

    # Schedules

    async def create_schedule(
        self,
        schedule_id: str = "",
        *,
        job: JobRef,
        trigger: Trigger,
        time_zone: str = "",
        description: str = "",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        jitter: timedelta | None = None,
        misfire_policy: MisfirePolicy | None = None,
        catchup_window: timedelta | None = None,
        overlap_policy: OverlapPolicy | None = None,
        paused: bool = False,
        arguments: Mapping[str, Any] | None = None,
        exclude_calendars: Iterable[CalendarRef] | None = None,
        only_on_calendars: Iterable[CalendarRef] | None = None,
        deadlines: Deadlines | None = None,
        namespace: str | None = None,
        request_id: str = "",
        validate_only: bool = False,
    ) -> Schedule:
        """Create a schedule for a job and return it as stored.

        `trigger` is a `CronTrigger`, `IntervalTrigger`, `DateTrigger` or a combination
        (`AnyOfTrigger`, `AllOfTrigger`); cron fields and wall-clock times are read in
        `time_zone` (an IANA name, UTC by default). The schedule goes in the job's namespace
        when `job` is a full name. Raises NotFound if the job does not exist. With
        `validate_only` the server checks everything and returns the schedule it would have
        stored, but stores nothing. A tick on one of `exclude_calendars`, or off one of
        `only_on_calendars` (calendars of the schedule's namespace), does not run: it is
        recorded as a SKIPPED execution with skip reason CALENDAR. `deadlines` alert when a
        tick starts late, ends late or runs too long (see `Deadlines`).
        """
        request = self._requests.create_schedule(
            schedule_id,
            namespace=namespace,
            request_id=request_id,
            job=job,
            trigger=trigger,
            time_zone=time_zone,
            description=description,
            start_time=start_time,
            end_time=end_time,
            jitter=jitter,
            misfire_policy=misfire_policy,
            catchup_window=catchup_window,
            overlap_policy=overlap_policy,
            paused=paused,
            arguments=arguments,
            exclude_calendars=exclude_calendars,
            only_on_calendars=only_on_calendars,
            deadlines=deadlines,
        )
        request.validate_only = validate_only
        return Schedule._from_proto((await self._call(self._schedules.CreateSchedule, request)).schedule)

    async def get_schedule(self, schedule: ScheduleRef) -> Schedule:
        """Get a schedule by id, name or `Schedule`. Raises NotFound."""
        request = schedule_service_pb2.GetScheduleRequest(name=self._requests.schedule_name(schedule))
        return Schedule._from_proto((await self._call(self._schedules.GetSchedule, request)).schedule)

    async def list_schedules(
        self,
        *,
        job: JobRef | None = None,
        page_size: int = 0,
        page_token: str = "",
        namespace: str | None = None,
    ) -> Page[Schedule]:
        """One page of the schedules of a namespace in id order, optionally of one job."""
        request = schedule_service_pb2.ListSchedulesRequest(
            parent=self._requests.parent(namespace),
            job=self._requests.job_name(job, namespace) if job is not None else "",
            page_size=page_size,
            page_token=page_token,
        )
        response = await self._call(self._schedules.ListSchedules, request)
        return Page([Schedule._from_proto(s) for s in response.schedules], response.next_page_token)

    def iter_schedules(
        self, *, job: JobRef | None = None, page_size: int = 0, namespace: str | None = None
    ) -> AsyncIterator[Schedule]:
        """Every schedule of a namespace (optionally of one job), a page at a time."""
        return self._pages(
            lambda token: self.list_schedules(
                job=job, page_size=page_size, page_token=token, namespace=namespace
            )
        )

    async def update_schedule(
        self,
        schedule: ScheduleRef,
        *,
        trigger: Maybe | Trigger = UNSET,
        time_zone: Maybe | str = UNSET,
        description: Maybe | str = UNSET,
        start_time: Maybe | datetime | None = UNSET,
        end_time: Maybe | datetime | None = UNSET,
        jitter: Maybe | timedelta | None = UNSET,
        misfire_policy: Maybe | MisfirePolicy | None = UNSET,
        catchup_window: Maybe | timedelta | None = UNSET,
        overlap_policy: Maybe | OverlapPolicy | None = UNSET,
        arguments: Maybe | Mapping[str, Any] = UNSET,
        exclude_calendars: Maybe | Iterable[CalendarRef] = UNSET,
        only_on_calendars: Maybe | Iterable[CalendarRef] = UNSET,
        deadlines: Maybe | Deadlines | None = UNSET,
        etag: str = "",
        validate_only: bool = False,
    ) -> Schedule:
        """Change the fields given (the others stay as they are) and return the schedule.

        `None` resets a field to its default. The job of a schedule cannot change, and
        `paused` changes through `pause_schedule`/`resume_schedule`. With `etag` (by default
        that of a `Schedule` passed as `schedule`) it raises Conflict if the schedule changed.
        With `validate_only` the server checks the update and returns the schedule as it
        would be, but stores nothing.
        """
        fields = {
            "trigger": trigger,
            "time_zone": time_zone,
            "description": description,
            "start_time": start_time,
            "end_time": end_time,
            "jitter": jitter,
            "misfire_policy": misfire_policy,
            "catchup_window": catchup_window,
            "overlap_policy": overlap_policy,
            "arguments": arguments,
            "exclude_calendars": exclude_calendars,
            "only_on_calendars": only_on_calendars,
            "deadlines": deadlines,
        }
        request = self._requests.update_schedule(schedule, etag, fields)
        request.validate_only = validate_only
        return Schedule._from_proto((await self._call(self._schedules.UpdateSchedule, request)).schedule)

    async def delete_schedule(self, schedule: ScheduleRef, *, etag: str = "") -> None:
        """Delete a schedule (its past executions are kept); Conflict on a stale `etag`."""
        request = schedule_service_pb2.DeleteScheduleRequest(
            name=self._requests.schedule_name(schedule),
            etag=etag or (schedule.etag if isinstance(schedule, Schedule) else ""),
        )
        await self._call(self._schedules.DeleteSchedule, request)

    async def pause_schedule(self, schedule: ScheduleRef, *, reason: str = "") -> Schedule:
        """Stop a schedule from firing until it is resumed; `reason` is kept as `pause_reason`."""
        request = schedule_service_pb2.PauseScheduleRequest(
            name=self._requests.schedule_name(schedule), reason=reason
        )
        return Schedule._from_proto((await self._call(self._schedules.PauseSchedule, request)).schedule)

    async def resume_schedule(self, schedule: ScheduleRef) -> Schedule:
        """Let a paused schedule fire again; ticks missed meanwhile follow its misfire policy."""
        request = schedule_service_pb2.ResumeScheduleRequest(name=self._requests.schedule_name(schedule))
        return Schedule._from_proto((await self._call(self._schedules.ResumeSchedule, request)).schedule)

    async def backfill_schedule(
        self,
        schedule: ScheduleRef,
        *,
        start_time: datetime,
        end_time: datetime,
        overlap_policy: OverlapPolicy | None = None,
        max_concurrency: int = 0,
        dry_run: bool = False,
        request_id: str = "",
    ) -> BackfillResult:
        """Run the ticks the schedule's trigger yields in [start_time, end_time) (a past range).

        `dry_run` only computes the ticks. Returns the ticks and the queued executions' names.
        """
        request = self._requests.backfill(
            schedule,
            start_time=start_time,
            end_time=end_time,
            overlap_policy=overlap_policy,
            max_concurrency=max_concurrency,
            dry_run=dry_run,
            request_id=request_id,
        )
        return BackfillResult._from_proto(await self._call(self._schedules.BackfillSchedule, request))

    async def preview_schedule(
        self,
        schedule: ScheduleRef | None = None,
        *,
        trigger: Trigger | None = None,
        time_zone: str = "",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        count: int = 0,
        after_time: datetime | None = None,
    ) -> SchedulePreview:
        """Compute the next fire times; nothing is stored or run.

        Give a stored schedule's id or name, an unsaved `Schedule`, or a `trigger` (with
        `time_zone`, `start_time`, `end_time`). `count` 0 means 10; `after_time` defaults
        to now.
        """
        request = self._requests.preview(
            schedule,
            trigger=trigger,
            time_zone=time_zone,
            start_time=start_time,
            end_time=end_time,
            count=count,
            after_time=after_time,
        )
        return SchedulePreview._from_proto(await self._call(self._schedules.PreviewSchedule, request))

    # Calendars

    async def create_calendar(
        self,
        calendar_id: str = "",
        *,
        time_zone: str = "",
        description: str = "",
        dates: Iterable[DateRange] = (),
        yearly_dates: Iterable[YearlyDate] = (),
        weekdays: Iterable[Weekday] = (),
        public_holidays: Iterable[PublicHolidays] = (),
        time_ranges: Iterable[TimeRange] = (),
        include_calendars: Iterable[CalendarRef] = (),
        exclude_calendars: Iterable[CalendarRef] = (),
        namespace: str | None = None,
        request_id: str = "",
        validate_only: bool = False,
    ) -> Calendar:
        """Create a calendar and return it as stored.

        A day is on it when one of `dates`, `yearly_dates`, `weekdays` or `public_holidays`
        names it; with `time_ranges` only those wall-clock times of it. `include_calendars`
        are added, `exclude_calendars` taken away (ids or names of the same namespace). Days
        and times are read in `time_zone` (UTC by default). With `validate_only` nothing is
        stored.
        """
        calendar = Calendar(
            time_zone=time_zone,
            description=description,
            dates=list(dates),
            yearly_dates=list(yearly_dates),
            weekdays=list(weekdays),
            public_holidays=list(public_holidays),
            time_ranges=list(time_ranges),
            include_calendars=[str(c) if isinstance(c, str) else c.name for c in include_calendars],
            exclude_calendars=[str(c) if isinstance(c, str) else c.name for c in exclude_calendars],
        )
        request = self._requests.create_calendar(
            calendar_id, calendar, namespace=namespace, request_id=request_id, validate_only=validate_only
        )
        return Calendar._from_proto((await self._call(self._calendars.CreateCalendar, request)).calendar)

    async def get_calendar(self, calendar: CalendarRef) -> Calendar:
        """Get a calendar by id, name or `Calendar`. Raises NotFound."""
        request = calendar_service_pb2.GetCalendarRequest(name=self._requests.calendar_name(calendar))
        return Calendar._from_proto((await self._call(self._calendars.GetCalendar, request)).calendar)

    async def list_calendars(
        self, *, page_size: int = 0, page_token: str = "", namespace: str | None = None
    ) -> Page[Calendar]:
        """One page of the calendars of a namespace in id order."""
        request = calendar_service_pb2.ListCalendarsRequest(
            parent=self._requests.parent(namespace), page_size=page_size, page_token=page_token
        )
        response = await self._call(self._calendars.ListCalendars, request)
        return Page([Calendar._from_proto(c) for c in response.calendars], response.next_page_token)

    def iter_calendars(self, *, page_size: int = 0, namespace: str | None = None) -> AsyncIterator[Calendar]:
        """Every calendar of a namespace, a page at a time."""
        return self._pages(
            lambda token: self.list_calendars(page_size=page_size, page_token=token, namespace=namespace)
        )

    async def update_calendar(
        self,
        calendar: CalendarRef,
        *,
        time_zone: Maybe | str = UNSET,
        description: Maybe | str = UNSET,
        dates: Maybe | Iterable[DateRange] = UNSET,
        yearly_dates: Maybe | Iterable[YearlyDate] = UNSET,
        weekdays: Maybe | Iterable[Weekday] = UNSET,
        public_holidays: Maybe | Iterable[PublicHolidays] = UNSET,
        time_ranges: Maybe | Iterable[TimeRange] = UNSET,
        include_calendars: Maybe | Iterable[CalendarRef] = UNSET,
        exclude_calendars: Maybe | Iterable[CalendarRef] = UNSET,
        etag: str = "",
        validate_only: bool = False,
    ) -> Calendar:
        """Change the fields given (the others stay as they are) and return the calendar.

        The schedules that use the calendar follow the change from their next tick on, and
        their next fire time is planned again. With `etag` (by default that of a `Calendar`
        passed as `calendar`) it raises Conflict if the calendar changed.
        """
        fields = {
            "time_zone": time_zone,
            "description": description,
            "dates": dates,
            "yearly_dates": yearly_dates,
            "weekdays": weekdays,
            "public_holidays": public_holidays,
            "time_ranges": time_ranges,
            "include_calendars": include_calendars,
            "exclude_calendars": exclude_calendars,
        }
        request = self._requests.update_calendar(calendar, etag, fields)
        request.validate_only = validate_only
        return Calendar._from_proto((await self._call(self._calendars.UpdateCalendar, request)).calendar)

    async def delete_calendar(self, calendar: CalendarRef, *, etag: str = "") -> None:
        """Delete a calendar; FailedPrecondition while a schedule or calendar names it."""
        request = calendar_service_pb2.DeleteCalendarRequest(
            name=self._requests.calendar_name(calendar),
            etag=etag or (calendar.etag if isinstance(calendar, Calendar) else ""),
        )
        await self._call(self._calendars.DeleteCalendar, request)

    async def preview_calendar(self, calendar: CalendarRef, *, year: int = 0) -> CalendarPreview:
        """The days of `year` (0: this year) that a stored calendar (id or name) or an unsaved
        `Calendar` holds."""
        request = calendar_service_pb2.PreviewCalendarRequest(year=year)
        if isinstance(calendar, Calendar) and not calendar.name:
            request.calendar.CopyFrom(calendar._to_proto())
        else:
            request.name = self._requests.calendar_name(calendar)
        return CalendarPreview._from_proto(await self._call(self._calendars.PreviewCalendar, request))

    # Alerts: notification routes and rules, incidents, deliveries

    def _route_name(self, route: str | NotificationRoute, namespace: str | None = None) -> str:
        value = route.name if isinstance(route, NotificationRoute) else route
        return resource_name("route", value, self._requests.ns(namespace))

    def _rule_name(self, rule: str | NotificationRule, namespace: str | None = None) -> str:
        value = rule.name if isinstance(rule, NotificationRule) else rule
        return resource_name("rule", value, self._requests.ns(namespace))

    async def create_notification_route(
        self,
        route_id: str = "",
        *,
        destination: Destination,
        description: str = "",
        max_per_hour: int = 0,
        namespace: str | None = None,
        request_id: str = "",
        validate_only: bool = False,
    ) -> NotificationRoute:
        """Create a route: where notifications go (a `WebhookDestination`, `SlackDestination`,
        `PagerDutyDestination` or `EmailDestination`; secrets are named, never given). At most
        `max_per_hour` notifications an hour are sent to it (0: the server's default)."""
        route = NotificationRoute(destination=destination, description=description, max_per_hour=max_per_hour)
        request = notification_service_pb2.CreateNotificationRouteRequest(
            parent=self._requests.parent(namespace),
            route_id=route_id,
            route=route._to_proto(),
            request_id=request_id,
            validate_only=validate_only,
        )
        response = await self._call(self._alerts.CreateNotificationRoute, request)
        return NotificationRoute._from_proto(response.route)

    async def get_notification_route(self, route: str | NotificationRoute) -> NotificationRoute:
        """Get a route by id or name. Raises NotFound."""
        request = notification_service_pb2.GetNotificationRouteRequest(name=self._route_name(route))
        return NotificationRoute._from_proto(
            (await self._call(self._alerts.GetNotificationRoute, request)).route
        )

    async def list_notification_routes(
        self, *, page_size: int = 0, page_token: str = "", namespace: str | None = None
    ) -> Page[NotificationRoute]:
        """One page of the routes of a namespace, in id order."""
        request = notification_service_pb2.ListNotificationRoutesRequest(
            parent=self._requests.parent(namespace), page_size=page_size, page_token=page_token
        )
        response = await self._call(self._alerts.ListNotificationRoutes, request)
        return Page([NotificationRoute._from_proto(r) for r in response.routes], response.next_page_token)

    def iter_notification_routes(
        self, *, page_size: int = 0, namespace: str | None = None
    ) -> AsyncIterator[NotificationRoute]:
        """Every route of a namespace, a page at a time."""
        return self._pages(
            lambda token: self.list_notification_routes(
                page_size=page_size, page_token=token, namespace=namespace
            )
        )

    async def update_notification_route(
        self,
        route: str | NotificationRoute,
        *,
        destination: Maybe | Destination = UNSET,
        description: Maybe | str = UNSET,
        max_per_hour: Maybe | int | None = UNSET,
        etag: str = "",
        validate_only: bool = False,
    ) -> NotificationRoute:
        """Change the fields given (the others stay as they are) and return the route.

        A `destination` replaces the route's whole destination, of whatever kind; `None` resets
        `max_per_hour` to the server's default. With `etag` (by default that of a
        `NotificationRoute` passed as `route`) it raises Conflict if the route changed. With
        `validate_only` the server checks the update and returns the route as it would be, but
        stores nothing.
        """
        fields = {"destination": destination, "description": description, "max_per_hour": max_per_hour}
        request = self._requests.update_notification_route(
            self._route_name(route),
            etag or (route.etag if isinstance(route, NotificationRoute) else ""),
            fields,
        )
        request.validate_only = validate_only
        return NotificationRoute._from_proto(
            (await self._call(self._alerts.UpdateNotificationRoute, request)).route
        )

    async def delete_notification_route(self, route: str | NotificationRoute, *, etag: str = "") -> None:
        """Delete a route; FailedPrecondition while a rule names it."""
        request = notification_service_pb2.DeleteNotificationRouteRequest(
            name=self._route_name(route),
            etag=etag or (route.etag if isinstance(route, NotificationRoute) else ""),
        )
        await self._call(self._alerts.DeleteNotificationRoute, request)

    async def create_notification_rule(
        self,
        rule_id: str = "",
        *,
        route: str | NotificationRoute,
        kinds: Iterable[AlertKind | str],
        job: JobRef | None = None,
        schedule: ScheduleRef | None = None,
        labels: Mapping[str, str] | None = None,
        description: str = "",
        namespace: str | None = None,
        request_id: str = "",
        validate_only: bool = False,
    ) -> NotificationRule:
        """Create a rule: alerts of `kinds` about the jobs it selects (by `job`, `schedule` or job
        `labels`; none: every job) notify `route`, once per incident."""
        ns = self._requests.ns(namespace)
        rule = NotificationRule(
            route=self._route_name(route, ns),
            kinds=alert_kinds(kinds),
            description=description,
            job=self._requests.job_name(job, ns) if job is not None else "",
            schedule=self._requests.schedule_name(schedule, ns) if schedule is not None else "",
            labels=dict(labels or {}),
        )
        request = notification_service_pb2.CreateNotificationRuleRequest(
            parent=self._requests.parent(ns),
            rule_id=rule_id,
            rule=rule._to_proto(),
            request_id=request_id,
            validate_only=validate_only,
        )
        return NotificationRule._from_proto(
            (await self._call(self._alerts.CreateNotificationRule, request)).rule
        )

    async def get_notification_rule(self, rule: str | NotificationRule) -> NotificationRule:
        """Get a rule by id or name. Raises NotFound."""
        request = notification_service_pb2.GetNotificationRuleRequest(name=self._rule_name(rule))
        return NotificationRule._from_proto(
            (await self._call(self._alerts.GetNotificationRule, request)).rule
        )

    async def list_notification_rules(
        self, *, page_size: int = 0, page_token: str = "", namespace: str | None = None
    ) -> Page[NotificationRule]:
        """One page of the rules of a namespace, in id order."""
        request = notification_service_pb2.ListNotificationRulesRequest(
            parent=self._requests.parent(namespace), page_size=page_size, page_token=page_token
        )
        response = await self._call(self._alerts.ListNotificationRules, request)
        return Page([NotificationRule._from_proto(r) for r in response.rules], response.next_page_token)

    def iter_notification_rules(
        self, *, page_size: int = 0, namespace: str | None = None
    ) -> AsyncIterator[NotificationRule]:
        """Every rule of a namespace, a page at a time."""
        return self._pages(
            lambda token: self.list_notification_rules(
                page_size=page_size, page_token=token, namespace=namespace
            )
        )

    async def update_notification_rule(
        self,
        rule: str | NotificationRule,
        *,
        route: Maybe | str | NotificationRoute = UNSET,
        kinds: Maybe | Iterable[AlertKind | str] = UNSET,
        job: Maybe | JobRef | None = UNSET,
        schedule: Maybe | ScheduleRef | None = UNSET,
        labels: Maybe | Mapping[str, str] | None = UNSET,
        description: Maybe | str = UNSET,
        etag: str = "",
        validate_only: bool = False,
    ) -> NotificationRule:
        """Change the fields given (the others stay as they are) and return the rule.

        `kinds` and `labels` replace the rule's whole list and map; `None` for `job`, `schedule`
        or `labels` selects any again. With `etag` (by default that of a `NotificationRule`
        passed as `rule`) it raises Conflict if the rule changed. With `validate_only` the server
        checks the update and returns the rule as it would be, but stores nothing.
        """
        fields = {
            "route": route,
            "kinds": kinds,
            "job": job,
            "schedule": schedule,
            "labels": labels,
            "description": description,
        }
        request = self._requests.update_notification_rule(
            self._rule_name(rule), etag or (rule.etag if isinstance(rule, NotificationRule) else ""), fields
        )
        request.validate_only = validate_only
        return NotificationRule._from_proto(
            (await self._call(self._alerts.UpdateNotificationRule, request)).rule
        )

    async def delete_notification_rule(self, rule: str | NotificationRule, *, etag: str = "") -> None:
        """Delete a rule; its open incidents close without notifying."""
        request = notification_service_pb2.DeleteNotificationRuleRequest(
            name=self._rule_name(rule),
            etag=etag or (rule.etag if isinstance(rule, NotificationRule) else ""),
        )
        await self._call(self._alerts.DeleteNotificationRule, request)

    async def list_incidents(
        self,
        *,
        job: JobRef | None = None,
        schedule: ScheduleRef | None = None,
        open_only: bool = False,
        page_size: int = 0,
        page_token: str = "",
        namespace: str | None = None,
    ) -> Page[Incident]:
        """One page of incidents, newest first, optionally of one job or schedule."""
        ns = self._requests.ns(namespace)
        request = notification_service_pb2.ListIncidentsRequest(
            parent=self._requests.parent(ns),
            job=self._requests.job_name(job, ns) if job is not None else "",
            schedule=self._requests.schedule_name(schedule, ns) if schedule is not None else "",
            open_only=open_only,
            page_size=page_size,
            page_token=page_token,
        )
        response = await self._call(self._alerts.ListIncidents, request)
        return Page([Incident._from_proto(i) for i in response.incidents], response.next_page_token)

    async def list_notification_deliveries(
        self,
        *,
        route: str | NotificationRoute | None = None,
        page_size: int = 0,
        page_token: str = "",
        namespace: str | None = None,
    ) -> Page[NotificationDelivery]:
        """One page of notifications sent or being sent, newest first, optionally to one route."""
        ns = self._requests.ns(namespace)
        request = notification_service_pb2.ListNotificationDeliveriesRequest(
            parent=self._requests.parent(ns),
            route=self._route_name(route, ns) if route is not None else "",
            page_size=page_size,
            page_token=page_token,
        )
        response = await self._call(self._alerts.ListNotificationDeliveries, request)
        return Page(
            [NotificationDelivery._from_proto(d) for d in response.deliveries], response.next_page_token
        )

    # Check-ins

    def _check_in_name(self, check_in: str | CheckIn, namespace: str | None = None) -> str:
        value = check_in.name if isinstance(check_in, CheckIn) else check_in
        return resource_name("check_in", value, self._requests.ns(namespace))

    async def create_check_in(
        self,
        check_in_id: str = "",
        *,
        trigger: Trigger,
        time_zone: str = "",
        grace: timedelta | None = None,
        labels: Mapping[str, str] | None = None,
        description: str = "",
        namespace: str | None = None,
        validate_only: bool = False,
    ) -> CreatedCheckIn:
        """Create a check-in: pings are expected on `trigger`'s ticks (read in `time_zone`),
        each within `grace` (default 5 minutes). Returns it with its ping token, shown only
        this once."""
        check_in = CheckIn(
            trigger=trigger,
            time_zone=time_zone,
            grace=grace,
            labels=dict(labels or {}),
            description=description,
        )
        request = checkin_service_pb2.CreateCheckInRequest(
            parent=self._requests.parent(namespace),
            check_in_id=check_in_id,
            check_in=check_in._to_proto(),
            validate_only=validate_only,
        )
        response = await self._call(self._check_ins.CreateCheckIn, request)
        return CreatedCheckIn(CheckIn._from_proto(response.check_in), response.token)

    async def get_check_in(self, check_in: str | CheckIn) -> CheckIn:
        """Get a check-in by id or name. Raises NotFound."""
        request = checkin_service_pb2.GetCheckInRequest(name=self._check_in_name(check_in))
        return CheckIn._from_proto((await self._call(self._check_ins.GetCheckIn, request)).check_in)

    async def list_check_ins(
        self, *, page_size: int = 0, page_token: str = "", namespace: str | None = None
    ) -> Page[CheckIn]:
        """One page of the check-ins of a namespace, in id order."""
        request = checkin_service_pb2.ListCheckInsRequest(
            parent=self._requests.parent(namespace), page_size=page_size, page_token=page_token
        )
        response = await self._call(self._check_ins.ListCheckIns, request)
        return Page([CheckIn._from_proto(c) for c in response.check_ins], response.next_page_token)

    def iter_check_ins(self, *, page_size: int = 0, namespace: str | None = None) -> AsyncIterator[CheckIn]:
        """Every check-in of a namespace, a page at a time."""
        return self._pages(
            lambda token: self.list_check_ins(page_size=page_size, page_token=token, namespace=namespace)
        )

    async def update_check_in(
        self,
        check_in: str | CheckIn,
        *,
        trigger: Maybe | Trigger = UNSET,
        time_zone: Maybe | str = UNSET,
        grace: Maybe | timedelta | None = UNSET,
        labels: Maybe | Mapping[str, str] | None = UNSET,
        description: Maybe | str = UNSET,
        etag: str = "",
        validate_only: bool = False,
    ) -> CheckIn:
        """Change the fields given (the others stay as they are) and return the check-in; its
        token stays the same.

        A new `trigger` or `time_zone` plans the awaited tick again: the first of the new plan
        after the update. A new `grace` keeps the awaited tick and moves its deadline. `None`
        resets `grace` to its default (5 minutes) and clears `labels`. With `etag` (by default
        that of a `CheckIn` passed as `check_in`) it raises Conflict if the check-in changed.
        With `validate_only` the server checks the update and returns the check-in as it would
        be, but stores nothing.
        """
        fields = {
            "trigger": trigger,
            "time_zone": time_zone,
            "grace": grace,
            "labels": labels,
            "description": description,
        }
        request = self._requests.update_check_in(
            self._check_in_name(check_in),
            etag or (check_in.etag if isinstance(check_in, CheckIn) else ""),
            fields,
        )
        request.validate_only = validate_only
        return CheckIn._from_proto((await self._call(self._check_ins.UpdateCheckIn, request)).check_in)

    async def delete_check_in(self, check_in: str | CheckIn, *, etag: str = "") -> None:
        """Delete a check-in; its token stops working."""
        request = checkin_service_pb2.DeleteCheckInRequest(
            name=self._check_in_name(check_in),
            etag=etag or (check_in.etag if isinstance(check_in, CheckIn) else ""),
        )
        await self._call(self._check_ins.DeleteCheckIn, request)

    async def ping_check_in(self, token: str, *, kind: CheckInPingKind | None = None) -> CheckIn:
        """Ping the check-in whose token this is: a success by default, or a start or a
        failure. Raises NotFound for an unknown token."""
        request = checkin_service_pb2.CheckInRequest(token=token, kind=enum_to(kind))
        return CheckIn._from_proto((await self._call(self._check_ins.CheckIn, request)).check_in)

    # Executions

    async def get_execution(self, execution: ExecutionRef) -> Execution:
        """Get an execution by id, name or `Execution`, with its captured output."""
        request = execution_service_pb2.GetExecutionRequest(name=self._requests.execution_name(execution))
        return Execution._from_proto((await self._call(self._executions.GetExecution, request)).execution)

    async def list_executions(
        self,
        *,
        job: JobRef | None = None,
        schedule: ScheduleRef | None = None,
        states: Iterable[ExecutionState] = (),
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        namespace: str | None = None,
    ) -> Page[Execution]:
        """One page of a namespace's executions, newest first, without their output.

        Filters: a job, a schedule, states, and a range of scheduled times
        [`start_time`, `end_time`).
        """
        request = self._requests.list_executions(
            namespace=namespace,
            job=job,
            schedule=schedule,
            states=states,
            start_time=start_time,
            end_time=end_time,
            page_size=page_size,
            page_token=page_token,
        )
        response = await self._call(self._executions.ListExecutions, request)
        return Page([Execution._from_proto(e) for e in response.executions], response.next_page_token)

    def iter_executions(
        self,
        *,
        job: JobRef | None = None,
        schedule: ScheduleRef | None = None,
        states: Iterable[ExecutionState] = (),
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        page_size: int = 0,
        namespace: str | None = None,
    ) -> AsyncIterator[Execution]:
        """Every execution matching the filters of `list_executions`, a page at a time."""
        wanted = tuple(states)
        return self._pages(
            lambda token: self.list_executions(
                job=job,
                schedule=schedule,
                states=wanted,
                start_time=start_time,
                end_time=end_time,
                page_size=page_size,
                page_token=token,
                namespace=namespace,
            )
        )

    async def cancel_execution(self, execution: ExecutionRef, *, reason: str = "") -> Execution:
        """Cancel the run `execution` is an attempt of: its live attempt, whichever it is (a
        retry queued or running after `execution` ended included). A QUEUED attempt is
        cancelled at once, a RUNNING one is stopped by its replica; a cancelled run is not
        retried.

        Returns the attempt cancelled (its `attempt` says which), CANCELLED or still RUNNING
        while it stops; `wait_for_execution(..., follow_retries=False)` waits for its end. When
        no attempt of the run is queued or running, nothing changes and `execution` is returned.
        """
        request = execution_service_pb2.CancelExecutionRequest(
            name=self._requests.execution_name(execution), reason=reason
        )
        return Execution._from_proto((await self._call(self._executions.CancelExecution, request)).execution)

    async def wait_for_execution(
        self,
        execution: ExecutionRef,
        *,
        poll_interval: timedelta | float = DEFAULT_POLL_INTERVAL,
        wait_timeout: timedelta | float | None = None,
        follow_retries: bool = True,
        on_attempt: Callable[[Execution, Execution | None], object] | None = None,
    ) -> Execution:
        """Poll an execution until it has ended and return it, with its output.

        With `follow_retries`, an attempt that fails and is retried is followed to the
        attempt that ends for good. Raises DeadlineExceeded if `wait_timeout` passes first.
        `on_attempt(attempt, retry)` is called with each attempt as it ends (its output
        included) and the attempt queued to retry it (`next_attempt_time`: when it is due), or
        None for the last one.
        """
        waiter = Waiter(poll_interval, wait_timeout)
        name = self._requests.execution_name(execution)
        while True:
            current = await self.get_execution(name)
            if current.ended:
                retry = await self._find_retry(current) if follow_retries else None
                if on_attempt is not None:
                    on_attempt(current, retry)
                if retry is None:
                    return current
                name = retry.name
                continue
            await asyncio.sleep(waiter.next_sleep(current))

    async def _find_retry(self, ended: Execution) -> Execution | None:
        request = self._requests.retry_lookup(ended)
        while request is not None:
            response = await self._call(self._executions.ListExecutions, request)
            found = find_retry((Execution._from_proto(e) for e in response.executions), ended)
            if found is not None or not response.next_page_token:
                return found
            request.page_token = response.next_page_token
        return None

    async def logs(
        self, execution: ExecutionRef, *, follow: bool = True, offset: int = 0
    ) -> AsyncGenerator[LogChunk, None]:
        """Stream an execution's output from byte `offset`, as `LogChunk`s.

        With `follow`, the stream stays open and yields output as it is produced until the
        execution ends (the last chunk carries `final_state`). A broken stream
        (UNAVAILABLE) is resumed from the last byte received. Iterate inside
        `contextlib.aclosing(...)` to end the stream at once when leaving the loop early.
        """
        cursor = LogCursor(self._requests.execution_name(execution), follow, offset)
        backoff = Reconnect()
        while True:
            # Reconnects wait for the channel to be ready rather than fail at once while it backs off.
            call = self._executions.StreamExecutionLogs(
                cursor.request(), metadata=self._metadata, wait_for_ready=backoff.retrying
            )
            try:
                async for response in call:
                    chunk = LogChunk._from_proto(response)
                    cursor.advance(chunk)
                    backoff.progressed()
                    yield chunk
                if cursor.complete:
                    return
            except grpc.RpcError as error:
                failure = from_rpc_error(error)
                if not resumable(failure):
                    raise failure from error
            finally:
                call.cancel()
            await asyncio.sleep(backoff.next_delay())

    # The cluster

    async def cluster_status(self, *, lag_window: timedelta | float | None = None) -> ClusterStatus:
        """The replicas (alive or not), the queue and the scheduling lag percentiles over
        `lag_window` (seconds or timedelta; None: the server's default of 5 minutes)."""
        request = cluster_service_pb2.GetClusterStatusRequest()
        if lag_window is not None:
            window = lag_window if isinstance(lag_window, timedelta) else timedelta(seconds=lag_window)
            request.lag_window.FromTimedelta(window)
        return ClusterStatus._from_proto(await self._call(self._cluster.GetClusterStatus, request))

    async def list_namespaces(self, *, page_size: int = 0, page_token: str = "") -> Page[Namespace]:
        """One page of the namespaces that hold jobs or schedules, by name, with their counts;
        only those the key may see."""
        request = cluster_service_pb2.ListNamespacesRequest(page_size=page_size, page_token=page_token)
        response = await self._call(self._cluster.ListNamespaces, request)
        return Page([Namespace._from_proto(n) for n in response.namespaces], response.next_page_token)

    def iter_namespaces(self, *, page_size: int = 0) -> AsyncIterator[Namespace]:
        """Every namespace of `list_namespaces`, a page at a time."""
        return self._pages(lambda token: self.list_namespaces(page_size=page_size, page_token=token))

    # API keys (an admin key is needed)

    async def create_key(
        self,
        namespaces: Sequence[str],
        role: Role | str,
        *,
        description: str = "",
        executors: Sequence[str] = (),
        queues: Sequence[str] = (),
    ) -> CreatedKey:
        """Create an API key for `namespaces` (["*"]: every one) with `role` (`Role` or
        "viewer", "editor", "admin", "worker") that may create and change jobs of the
        `executors` kinds (["*"]: every one; empty: the server's default, http and noop), or,
        role worker, take remote work from `queues` (["*"]: every queue). Its token is in the
        result, and only there."""
        request = create_request(namespaces, role, description, executors, queues)
        response = await self._call(self._keys.CreateKey, request)
        return CreatedKey(Key._from_proto(response.key), response.token)

    async def get_key(self, key: str | Key) -> Key:
        """Get a key by id, name (`keys/<id>`) or `Key`. Raises NotFound."""
        request = key_service_pb2.GetKeyRequest(name=key_name(key))
        return Key._from_proto((await self._call(self._keys.GetKey, request)).key)

    async def list_keys(self, *, page_size: int = 0, page_token: str = "") -> Page[Key]:
        """One page of the keys (revoked ones included), in id order."""
        request = key_service_pb2.ListKeysRequest(page_size=page_size, page_token=page_token)
        response = await self._call(self._keys.ListKeys, request)
        return Page([Key._from_proto(k) for k in response.keys], response.next_page_token)

    def iter_keys(self, *, page_size: int = 0) -> AsyncIterator[Key]:
        """Every key, fetched a page at a time as the iteration goes."""
        return self._pages(lambda token: self.list_keys(page_size=page_size, page_token=token))

    async def revoke_key(self, key: str | Key) -> Key:
        """Revoke a key; servers refuse it within their key cache time (5 s by default)."""
        request = key_service_pb2.RevokeKeyRequest(name=key_name(key))
        return Key._from_proto((await self._call(self._keys.RevokeKey, request)).key)

    # Events

    async def list_events(
        self,
        *,
        after_sequence: int = 0,
        job: JobRef | None = None,
        schedule: ScheduleRef | None = None,
        event_types: Iterable[EventType] = (),
        page_size: int = 0,
        page_token: str = "",
        namespace: str | None = None,
    ) -> Page[Event]:
        """One page of retained events in sequence order; `namespace="-"` lists every namespace."""
        request = self._requests.list_events(
            namespace=namespace,
            after_sequence=after_sequence,
            job=job,
            schedule=schedule,
            event_types=event_types,
            page_size=page_size,
            page_token=page_token,
        )
        response: event_service_pb2.ListEventsResponse = await self._call(self._events.ListEvents, request)
        return Page([Event._from_proto(e) for e in response.events], response.next_page_token)

    def iter_events(
        self,
        *,
        after_sequence: int = 0,
        job: JobRef | None = None,
        schedule: ScheduleRef | None = None,
        event_types: Iterable[EventType] = (),
        page_size: int = 0,
        namespace: str | None = None,
    ) -> AsyncIterator[Event]:
        """Every retained event matching the filters of `list_events`, a page at a time."""
        types = tuple(event_types)
        return self._pages(
            lambda token: self.list_events(
                after_sequence=after_sequence,
                job=job,
                schedule=schedule,
                event_types=types,
                page_size=page_size,
                page_token=token,
                namespace=namespace,
            )
        )

    async def watch(
        self,
        *,
        after_sequence: int = 0,
        job: JobRef | None = None,
        schedule: ScheduleRef | None = None,
        event_types: Iterable[EventType] = (),
        namespace: str | None = None,
        reconnect: bool = True,
    ) -> AsyncGenerator[Event, None]:
        """Yield events as they are committed, forever (stop by leaving the loop).

        `after_sequence` first replays the retained events after it (0: only new ones).
        When the stream breaks or the server ends it with a resumable status (UNAVAILABLE, e.g.
        a replica shutting down; ABORTED; RESOURCE_EXHAUSTED `WATCHER_TOO_SLOW`), it reconnects
        with backoff and resumes after the last sequence seen, so no event is missed or
        repeated; `reconnect=False` raises instead. OutOfRange means the events after
        `after_sequence` are no longer retained. `namespace="-"` watches every namespace the
        caller may read. To end the stream at once when leaving the loop early, iterate inside
        `contextlib.aclosing(client.watch(...))`.
        """
        cursor = WatchCursor(
            self._requests.watch_events(
                namespace=namespace,
                after_sequence=after_sequence,
                job=job,
                schedule=schedule,
                event_types=tuple(event_types),
            )
        )
        backoff = Reconnect()
        while True:
            call = self._events.WatchEvents(
                cursor.request(), metadata=self._metadata, wait_for_ready=backoff.retrying
            )
            try:
                async for response in call:
                    events = cursor.accept(response)
                    backoff.progressed()
                    for event in events:
                        yield event
            except grpc.RpcError as error:
                failure = from_rpc_error(error)
                if not (reconnect and resumable(failure)):
                    raise failure from error
            finally:
                call.cancel()
            if not reconnect:
                return
            await asyncio.sleep(backoff.next_delay())
