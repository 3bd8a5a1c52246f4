"""The SDK's value types: enums without the proto prefix and dataclasses over the messages.

Every dataclass converts itself with `_to_proto` / `_from_proto`; users never see the
generated classes. Times are aware `datetime`s (UTC when read), durations `timedelta`s,
JSON objects `dict`s. Enum fields are None when the server left them unspecified.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Generic, TypeAlias, TypeVar

from cronwire._convert import (
    NamedIntEnum,
    check_aware,
    dict_to_struct,
    duration_from,
    enum_from,
    enum_to,
    enums_to,
    set_duration,
    set_time,
    split_name,
    struct_to_dict,
    time_from,
    value_from,
)
from cronwire.v1 import (
    calendar_pb2,
    calendar_service_pb2,
    cluster_pb2,
    cluster_service_pb2,
    event_pb2,
    execution_pb2,
    execution_service_pb2,
    job_pb2,
    schedule_pb2,
    schedule_service_pb2,
)

T = TypeVar("T")

# Enums


class ExecutionState(NamedIntEnum):
    """Where an execution is in its life: QUEUED -> RUNNING -> one end state."""

    QUEUED = execution_pb2.EXECUTION_STATE_QUEUED
    RUNNING = execution_pb2.EXECUTION_STATE_RUNNING
    SUCCEEDED = execution_pb2.EXECUTION_STATE_SUCCEEDED
    FAILED = execution_pb2.EXECUTION_STATE_FAILED
    TIMED_OUT = execution_pb2.EXECUTION_STATE_TIMED_OUT
    CANCELLED = execution_pb2.EXECUTION_STATE_CANCELLED
    SKIPPED = execution_pb2.EXECUTION_STATE_SKIPPED
    LOST = execution_pb2.EXECUTION_STATE_LOST

    @property
    def ended(self) -> bool:
        """True for the end states (every state but QUEUED and RUNNING)."""
        return self not in (ExecutionState.QUEUED, ExecutionState.RUNNING)


class ExecutionTrigger(NamedIntEnum):
    """What caused an execution."""

    SCHEDULE = execution_pb2.EXECUTION_TRIGGER_SCHEDULE
    RUN_NOW = execution_pb2.EXECUTION_TRIGGER_RUN_NOW
    BACKFILL = execution_pb2.EXECUTION_TRIGGER_BACKFILL
    DEPENDENCY = execution_pb2.EXECUTION_TRIGGER_DEPENDENCY
    RETRY = execution_pb2.EXECUTION_TRIGGER_RETRY


class SkipReason(NamedIntEnum):
    """Why a tick did not run."""

    OVERLAP = execution_pb2.SKIP_REASON_OVERLAP
    MISSED = execution_pb2.SKIP_REASON_MISSED
    PAUSED = execution_pb2.SKIP_REASON_PAUSED
    CALENDAR = execution_pb2.SKIP_REASON_CALENDAR


class LogStream(NamedIntEnum):
    """Which output stream a piece of captured output came from."""

    STDOUT = execution_pb2.LOG_STREAM_STDOUT
    STDERR = execution_pb2.LOG_STREAM_STDERR


class DependencyCondition(NamedIntEnum):
    """When a dependent job is triggered by the end of an execution."""

    ON_SUCCESS = job_pb2.DEPENDENCY_CONDITION_ON_SUCCESS
    ON_FAILURE = job_pb2.DEPENDENCY_CONDITION_ON_FAILURE
    ON_COMPLETION = job_pb2.DEPENDENCY_CONDITION_ON_COMPLETION


class MisfirePolicy(NamedIntEnum):
    """What happens to ticks missed while no replica ran or while the schedule was paused."""

    SKIP = schedule_pb2.MISFIRE_POLICY_SKIP
    RUN_ONCE = schedule_pb2.MISFIRE_POLICY_RUN_ONCE
    RUN_ALL = schedule_pb2.MISFIRE_POLICY_RUN_ALL


class DstPolicy(NamedIntEnum):
    """What a cron trigger does with a wall time a daylight-saving change skips.

    DEBIAN (the default, as Debian cron): it fires at the jump. SKIP (as Kubernetes
    CronJobs): it does not fire. Under both, a fixed time the clock repeats fires once
    and a wildcard minute or hour follows the clock as it runs.
    """

    DEBIAN = schedule_pb2.DST_POLICY_DEBIAN
    SKIP = schedule_pb2.DST_POLICY_SKIP


class OverlapPolicy(NamedIntEnum):
    """What happens when a tick comes while the previous execution still runs."""

    SKIP = schedule_pb2.OVERLAP_POLICY_SKIP
    QUEUE_ONE = schedule_pb2.OVERLAP_POLICY_QUEUE_ONE
    ALLOW_ALL = schedule_pb2.OVERLAP_POLICY_ALLOW_ALL
    CANCEL_RUNNING = schedule_pb2.OVERLAP_POLICY_CANCEL_RUNNING


class EventType(NamedIntEnum):
    """The kinds of event."""

    EXECUTION_QUEUED = event_pb2.EVENT_TYPE_EXECUTION_QUEUED
    EXECUTION_STARTED = event_pb2.EVENT_TYPE_EXECUTION_STARTED
    EXECUTION_SUCCEEDED = event_pb2.EVENT_TYPE_EXECUTION_SUCCEEDED
    EXECUTION_FAILED = event_pb2.EVENT_TYPE_EXECUTION_FAILED
    EXECUTION_TIMED_OUT = event_pb2.EVENT_TYPE_EXECUTION_TIMED_OUT
    EXECUTION_CANCELLED = event_pb2.EVENT_TYPE_EXECUTION_CANCELLED
    EXECUTION_RETRYING = event_pb2.EVENT_TYPE_EXECUTION_RETRYING
    EXECUTION_SKIPPED = event_pb2.EVENT_TYPE_EXECUTION_SKIPPED
    EXECUTION_LOST = event_pb2.EVENT_TYPE_EXECUTION_LOST
    JOB_CREATED = event_pb2.EVENT_TYPE_JOB_CREATED
    JOB_UPDATED = event_pb2.EVENT_TYPE_JOB_UPDATED
    JOB_DELETED = event_pb2.EVENT_TYPE_JOB_DELETED
    SCHEDULE_CREATED = event_pb2.EVENT_TYPE_SCHEDULE_CREATED
    SCHEDULE_UPDATED = event_pb2.EVENT_TYPE_SCHEDULE_UPDATED
    SCHEDULE_PAUSED = event_pb2.EVENT_TYPE_SCHEDULE_PAUSED
    SCHEDULE_RESUMED = event_pb2.EVENT_TYPE_SCHEDULE_RESUMED
    SCHEDULE_DELETED = event_pb2.EVENT_TYPE_SCHEDULE_DELETED
    CALENDAR_CREATED = event_pb2.EVENT_TYPE_CALENDAR_CREATED
    CALENDAR_UPDATED = event_pb2.EVENT_TYPE_CALENDAR_UPDATED
    CALENDAR_DELETED = event_pb2.EVENT_TYPE_CALENDAR_DELETED
    DEADLINE_MISSED = event_pb2.EVENT_TYPE_DEADLINE_MISSED
    CHECKIN_MISSED = event_pb2.EVENT_TYPE_CHECKIN_MISSED
    CHECKIN_SUCCEEDED = event_pb2.EVENT_TYPE_CHECKIN_SUCCEEDED
    CHECKIN_FAILED = event_pb2.EVENT_TYPE_CHECKIN_FAILED
    CHECKIN_DELETED = event_pb2.EVENT_TYPE_CHECKIN_DELETED


# Pages


@dataclass
class Page(Generic[T]):
    """One page of a listing: its items and the token of the next page ("" on the last page)."""

    items: list[T]
    next_page_token: str = ""

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


# Jobs


@dataclass
class ExecutionRetention:
    """Which finished executions of a job are kept, in place of the server's retention settings:
    the newest `max_count` (0: no limit by count), none that ended more than `max_age` ago (None:
    no limit by age). Queued and running executions are always kept."""

    max_count: int = 0
    max_age: timedelta | None = None

    def _to_proto(self) -> job_pb2.ExecutionRetention:
        message = job_pb2.ExecutionRetention(max_count=self.max_count)
        if self.max_age is not None:
            set_duration(message.max_age, self.max_age)
        return message

    @classmethod
    def _from_proto(cls, message: job_pb2.ExecutionRetention) -> ExecutionRetention:
        return cls(max_count=message.max_count, max_age=duration_from(message, "max_age"))


@dataclass
class RetryPolicy:
    """How failed attempts are retried: at most `max_attempts` in all, the first included.

    The delay before attempt n+1 is `initial_backoff * backoff_multiplier ** (n - 1)`,
    capped at `max_backoff` and spread by `jitter` (a fraction in [0, 1]). Unset values
    take the server's defaults (1 s, 2, 1 h).
    """

    max_attempts: int = 0
    initial_backoff: timedelta | None = None
    backoff_multiplier: float = 0.0
    max_backoff: timedelta | None = None
    jitter: float = 0.0

    def _to_proto(self) -> job_pb2.RetryPolicy:
        message = job_pb2.RetryPolicy(
            max_attempts=self.max_attempts, backoff_multiplier=self.backoff_multiplier, jitter=self.jitter
        )
        if self.initial_backoff is not None:
            set_duration(message.initial_backoff, self.initial_backoff)
        if self.max_backoff is not None:
            set_duration(message.max_backoff, self.max_backoff)
        return message

    @classmethod
    def _from_proto(cls, message: job_pb2.RetryPolicy) -> RetryPolicy:
        return cls(
            max_attempts=message.max_attempts,
            initial_backoff=duration_from(message, "initial_backoff"),
            backoff_multiplier=message.backoff_multiplier,
            max_backoff=duration_from(message, "max_backoff"),
            jitter=message.jitter,
        )


@dataclass
class JobDependent:
    """A job triggered when an execution of this job ends; `job` is an id or a full name."""

    job: str
    condition: DependencyCondition | None = None

    def _to_proto(self) -> job_pb2.JobDependent:
        return job_pb2.JobDependent(job=self.job, condition=enum_to(self.condition))

    @classmethod
    def _from_proto(cls, message: job_pb2.JobDependent) -> JobDependent:
        return cls(job=message.job, condition=enum_from(DependencyCondition, message.condition))


@dataclass
class CompletionCallback:
    """A webhook POSTed to when an execution ends in one of `states` (empty: every end state).

    `secret` is sent, never read back; `secret_set` says whether the server holds one.
    """

    url: str
    states: list[ExecutionState] = field(default_factory=list)
    secret: str = ""
    secret_set: bool = False

    def _to_proto(self) -> job_pb2.CompletionCallback:
        return job_pb2.CompletionCallback(url=self.url, states=enums_to(self.states), secret=self.secret)

    @classmethod
    def _from_proto(cls, message: job_pb2.CompletionCallback) -> CompletionCallback:
        states = [s for s in (enum_from(ExecutionState, v) for v in message.states) if s is not None]
        return cls(url=message.url, states=states, secret_set=message.secret_set)


@dataclass
class ExecutionStats:
    """Statistics over the executions of a job or a schedule."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    last_run_time: datetime | None = None
    last_run_state: ExecutionState | None = None
    next_run_time: datetime | None = None
    p50_duration: timedelta | None = None
    # A schedule with deadlines (get_schedule): the deadlines its ticks missed in the last 14 days.
    deadlines_missed: int = 0

    @classmethod
    def _from_proto(cls, message: execution_pb2.ExecutionStats) -> ExecutionStats:
        return cls(
            total=message.total,
            succeeded=message.succeeded,
            failed=message.failed,
            last_run_time=time_from(message, "last_run_time"),
            last_run_state=enum_from(ExecutionState, message.last_run_state),
            next_run_time=time_from(message, "next_run_time"),
            p50_duration=duration_from(message, "p50_duration"),
            deadlines_missed=message.deadlines_missed,
        )


@dataclass
class Job:
    """A job: what to run (an executor kind and its parameters) and how to run it.

    `arguments_schema`, a JSON Schema (draft 2020-12) for the arguments of its runs, makes it a
    template: runs and schedules whose arguments do not match are refused, and the `default` of
    each top-level property the arguments lack is filled in. None means any arguments.
    `name`, `create_time`, `update_time`, `etag` and `stats` are set by the server.
    """

    name: str = ""
    executor: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    timeout: timedelta | None = None
    retry_policy: RetryPolicy | None = None
    max_concurrency: int = 0
    dependents: list[JobDependent] = field(default_factory=list)
    callback: CompletionCallback | None = None
    labels: dict[str, str] = field(default_factory=dict)
    execution_retention: ExecutionRetention | None = None
    arguments_schema: dict[str, Any] | None = None
    create_time: datetime | None = None
    update_time: datetime | None = None
    etag: str = ""
    stats: ExecutionStats | None = None

    @property
    def id(self) -> str:
        """The last part of the name (`backup` in `namespaces/default/jobs/backup`)."""
        return split_name(self.name)[1]

    @property
    def namespace(self) -> str:
        """The namespace part of the name."""
        return split_name(self.name)[0]

    def _to_proto(self) -> job_pb2.Job:
        message = job_pb2.Job(
            name=self.name,
            executor=self.executor,
            description=self.description,
            max_concurrency=self.max_concurrency,
            dependents=[d._to_proto() for d in self.dependents],
            labels=self.labels,
            etag=self.etag,
        )
        dict_to_struct(self.parameters, message.parameters)
        if self.timeout is not None:
            set_duration(message.timeout, self.timeout)
        if self.retry_policy is not None:
            message.retry_policy.CopyFrom(self.retry_policy._to_proto())
        if self.callback is not None:
            message.callback.CopyFrom(self.callback._to_proto())
        if self.execution_retention is not None:
            message.execution_retention.CopyFrom(self.execution_retention._to_proto())
        if self.arguments_schema is not None:
            message.arguments_schema.SetInParent()
            dict_to_struct(self.arguments_schema, message.arguments_schema)
        return message

    @classmethod
    def _from_proto(cls, message: job_pb2.Job) -> Job:
        return cls(
            name=message.name,
            executor=message.executor,
            parameters=struct_to_dict(message.parameters),
            description=message.description,
            timeout=duration_from(message, "timeout"),
            retry_policy=(
                RetryPolicy._from_proto(message.retry_policy) if message.HasField("retry_policy") else None
            ),
            max_concurrency=message.max_concurrency,
            dependents=[JobDependent._from_proto(d) for d in message.dependents],
            callback=(
                CompletionCallback._from_proto(message.callback) if message.HasField("callback") else None
            ),
            labels=dict(message.labels),
            execution_retention=(
                ExecutionRetention._from_proto(message.execution_retention)
                if message.HasField("execution_retention")
                else None
            ),
            arguments_schema=(
                struct_to_dict(message.arguments_schema) if message.HasField("arguments_schema") else None
            ),
            create_time=time_from(message, "create_time"),
            update_time=time_from(message, "update_time"),
            etag=message.etag,
            stats=ExecutionStats._from_proto(message.stats) if message.HasField("stats") else None,
        )


@dataclass
class JobType:
    """An executor kind and the JSON schema (draft 2020-12) of its parameters."""

    name: str
    description: str = ""
    parameters_schema: dict[str, Any] = field(default_factory=dict)
    example: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _from_proto(cls, message: job_pb2.JobType) -> JobType:
        return cls(
            name=message.name,
            description=message.description,
            parameters_schema=struct_to_dict(message.parameters_schema),
            example=struct_to_dict(message.example),
        )


@dataclass
class Namespace:
    """A namespace that holds jobs or schedules (`list_namespaces`), with what it holds."""

    name: str  # namespaces/{namespace}
    job_count: int = 0
    schedule_count: int = 0

    @property
    def id(self) -> str:
        """The namespace itself: `ops` for `namespaces/ops`."""
        return self.name.split("/", 1)[1]

    @classmethod
    def _from_proto(cls, message: cluster_service_pb2.Namespace) -> Namespace:
        return cls(name=message.name, job_count=message.job_count, schedule_count=message.schedule_count)


# Triggers


@dataclass(frozen=True)
class CronTrigger:
    """Fires on the times a cron expression of 5 fields (`0 9 * * 1-5`), 6 fields (with
    seconds first) or a macro (`@daily`) names, read in the schedule's time zone, with
    Debian cron's semantics; `dst_policy` says what a time the clock skips does."""

    expression: str
    dst_policy: DstPolicy = DstPolicy.DEBIAN

    def _fill(self, out: schedule_pb2.Trigger) -> None:
        out.cron.expression = self.expression
        out.cron.dst_policy = enum_to(self.dst_policy)


@dataclass(frozen=True)
class IntervalTrigger:
    """Fires every `every`, counted from the schedule's start time (or its creation)."""

    every: timedelta

    def _fill(self, out: schedule_pb2.Trigger) -> None:
        set_duration(out.interval.every, self.every)


@dataclass(frozen=True)
class DateTrigger:
    """Fires once, at `run_time` (an aware datetime)."""

    run_time: datetime

    def __post_init__(self) -> None:
        check_aware(self.run_time, "DateTrigger.run_time")

    def _fill(self, out: schedule_pb2.Trigger) -> None:
        set_time(out.date.run_time, self.run_time)


@dataclass(frozen=True)
class AnyOfTrigger:
    """Fires whenever any of its two or more triggers fires."""

    triggers: tuple[Trigger, ...]

    def __init__(self, triggers: Sequence[Trigger]) -> None:
        object.__setattr__(self, "triggers", tuple(triggers))

    def _fill(self, out: schedule_pb2.Trigger) -> None:
        out.any_of.SetInParent()
        for trigger in self.triggers:
            trigger._fill(out.any_of.triggers.add())


@dataclass(frozen=True)
class AllOfTrigger:
    """Fires only at the times every one of its two or more triggers agrees on."""

    triggers: tuple[Trigger, ...]

    def __init__(self, triggers: Sequence[Trigger]) -> None:
        object.__setattr__(self, "triggers", tuple(triggers))

    def _fill(self, out: schedule_pb2.Trigger) -> None:
        out.all_of.SetInParent()
        for trigger in self.triggers:
            trigger._fill(out.all_of.triggers.add())


@dataclass(frozen=True)
class BusinessDayTrigger:
    """Fires on the `day`-th business day of every month (1 the first, -1 the last, -2 the one
    before it), counted from `from_day` when set, at `time_of_day` (`HH:MM`, wall clock in the
    schedule's time zone); with `from_date`, once, on the `day`-th business day counted from that
    date. Business days are the days `calendar` (a calendar of the schedule's namespace, id or
    name) holds."""

    calendar: str
    day: int
    time_of_day: str = "00:00"
    # Count from this day of the month (forward, or backward for a negative `day`), into the next
    # (previous) month if need be: day 1, from_day 15 is the 15th or the next business day. 0: unset.
    from_day: int = 0
    # Fire once: day 1 is this date if it is a business day, else the next business day after
    # it; -1 the date or the business day before it. None: every month.
    from_date: date | None = None

    def _fill(self, out: schedule_pb2.Trigger) -> None:
        out.business_day.calendar = self.calendar
        out.business_day.day = self.day
        out.business_day.time_of_day = self.time_of_day
        out.business_day.from_day = self.from_day
        if self.from_date is not None:
            out.business_day.from_date = self.from_date.isoformat()


@dataclass(frozen=True)
class RRuleTrigger:
    """Fires on the occurrences of an RFC 5545 recurrence: DTSTART, RRULE and optional RDATE,
    EXDATE and EXRULE lines, e.g. "DTSTART:20270104T090000\\nRRULE:FREQ=WEEKLY;BYDAY=MO,WE". Its
    times are wall-clock times in the schedule's time zone (no TZID, no `Z`)."""

    rule: str

    def _fill(self, out: schedule_pb2.Trigger) -> None:
        out.rrule.rule = self.rule


Trigger: TypeAlias = (
    CronTrigger
    | IntervalTrigger
    | DateTrigger
    | AnyOfTrigger
    | AllOfTrigger
    | BusinessDayTrigger
    | RRuleTrigger
)
"""When a schedule fires: one of the trigger classes."""


def trigger_to_proto(trigger: Trigger) -> schedule_pb2.Trigger:
    message = schedule_pb2.Trigger()
    trigger._fill(message)
    return message


def trigger_from_proto(message: schedule_pb2.Trigger) -> Trigger | None:
    kind = message.WhichOneof("kind")
    if kind == "cron":
        return CronTrigger(
            message.cron.expression, enum_from(DstPolicy, message.cron.dst_policy) or DstPolicy.DEBIAN
        )
    if kind == "interval":
        return IntervalTrigger(message.interval.every.ToTimedelta())
    if kind == "date":
        run_time = time_from(message.date, "run_time")
        return DateTrigger(run_time) if run_time is not None else None
    if kind == "rrule":
        return RRuleTrigger(message.rrule.rule)
    if kind == "business_day":
        body = message.business_day
        from_date = date.fromisoformat(body.from_date) if body.from_date else None
        return BusinessDayTrigger(
            body.calendar, body.day, body.time_of_day or "00:00", body.from_day, from_date
        )
    if kind in ("any_of", "all_of"):
        children = [trigger_from_proto(child) for child in getattr(message, kind).triggers]
        known = [child for child in children if child is not None]
        return AnyOfTrigger(known) if kind == "any_of" else AllOfTrigger(known)
    return None


# Schedules


@dataclass(frozen=True)
class Deadlines:
    """When a schedule's ticks must start and end, and how long they may run: each miss is an
    alert (LATE, MISSED, TOO_LONG) and a DEADLINE_MISSED event, never a stop.

    `finish_by` is a wall-clock time `"HH:MM"` in the schedule's time zone (the first such time
    after the tick) or a duration after the tick.
    """

    start_within: timedelta | None = None
    finish_by: str | timedelta | None = None
    max_duration: timedelta | None = None

    def _to_proto(self, out: schedule_pb2.ScheduleDeadlines) -> None:
        if self.start_within is not None:
            set_duration(out.start_within, self.start_within)
        if self.max_duration is not None:
            set_duration(out.max_duration, self.max_duration)
        if isinstance(self.finish_by, str):
            out.finish_by.local_time = self.finish_by
        elif self.finish_by is not None:
            set_duration(out.finish_by.after_tick, self.finish_by)

    @classmethod
    def _from_proto(cls, message: schedule_pb2.ScheduleDeadlines) -> Deadlines:
        finish: str | timedelta | None = None
        if message.finish_by.WhichOneof("deadline") == "local_time":
            finish = message.finish_by.local_time
        elif message.finish_by.WhichOneof("deadline") == "after_tick":
            finish = duration_from(message.finish_by, "after_tick")
        return cls(
            start_within=duration_from(message, "start_within"),
            finish_by=finish,
            max_duration=duration_from(message, "max_duration"),
        )


@dataclass
class Schedule:
    """A schedule: when one job runs.

    `name`, `next_fire_time`, `create_time`, `update_time`, `etag`, `pause_reason` and
    `stats` are set by the server; `paused` changes through pause/resume.
    """

    name: str = ""
    job: str = ""
    trigger: Trigger | None = None
    description: str = ""
    time_zone: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None
    jitter: timedelta | None = None
    misfire_policy: MisfirePolicy | None = None
    catchup_window: timedelta | None = None
    overlap_policy: OverlapPolicy | None = None
    paused: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    next_fire_time: datetime | None = None
    create_time: datetime | None = None
    update_time: datetime | None = None
    etag: str = ""
    pause_reason: str = ""
    stats: ExecutionStats | None = None
    # Calendar names (`namespaces/{namespace}/calendars/{calendar}`) of the schedule's namespace.
    exclude_calendars: list[str] = field(default_factory=list)
    only_on_calendars: list[str] = field(default_factory=list)
    deadlines: Deadlines | None = None

    @property
    def id(self) -> str:
        """The last part of the name (`nightly` in `namespaces/default/schedules/nightly`)."""
        return split_name(self.name)[1]

    @property
    def namespace(self) -> str:
        """The namespace part of the name."""
        return split_name(self.name)[0]

    def _to_proto(self) -> schedule_pb2.Schedule:
        message = schedule_pb2.Schedule(
            name=self.name,
            job=self.job,
            description=self.description,
            time_zone=self.time_zone,
            misfire_policy=enum_to(self.misfire_policy),
            overlap_policy=enum_to(self.overlap_policy),
            paused=self.paused,
            etag=self.etag,
            exclude_calendars=self.exclude_calendars,
            only_on_calendars=self.only_on_calendars,
        )
        if self.trigger is not None:
            message.trigger.CopyFrom(trigger_to_proto(self.trigger))
        if self.start_time is not None:
            set_time(message.start_time, self.start_time)
        if self.end_time is not None:
            set_time(message.end_time, self.end_time)
        if self.jitter is not None:
            set_duration(message.jitter, self.jitter)
        if self.catchup_window is not None:
            set_duration(message.catchup_window, self.catchup_window)
        dict_to_struct(self.arguments, message.arguments)
        if self.deadlines is not None:
            self.deadlines._to_proto(message.deadlines)
        return message

    @classmethod
    def _from_proto(cls, message: schedule_pb2.Schedule) -> Schedule:
        return cls(
            name=message.name,
            job=message.job,
            trigger=trigger_from_proto(message.trigger),
            description=message.description,
            time_zone=message.time_zone,
            start_time=time_from(message, "start_time"),
            end_time=time_from(message, "end_time"),
            jitter=duration_from(message, "jitter"),
            misfire_policy=enum_from(MisfirePolicy, message.misfire_policy),
            catchup_window=duration_from(message, "catchup_window"),
            overlap_policy=enum_from(OverlapPolicy, message.overlap_policy),
            paused=message.paused,
            arguments=struct_to_dict(message.arguments),
            next_fire_time=time_from(message, "next_fire_time"),
            create_time=time_from(message, "create_time"),
            update_time=time_from(message, "update_time"),
            etag=message.etag,
            pause_reason=message.pause_reason,
            stats=ExecutionStats._from_proto(message.stats) if message.HasField("stats") else None,
            exclude_calendars=list(message.exclude_calendars),
            only_on_calendars=list(message.only_on_calendars),
            deadlines=Deadlines._from_proto(message.deadlines) if message.HasField("deadlines") else None,
        )


@dataclass(frozen=True)
class FireTime:
    """One computed fire time: the instant, the same instant as wall-clock time in the
    schedule's time zone (with its UTC offset), and daylight-saving flags. `excluded_by` names
    the calendar that excludes the tick (it does not run), `exclusion_reason` says why."""

    fire_time: datetime
    local_time: datetime
    in_dst_gap: bool = False
    in_dst_fold: bool = False
    excluded_by: str = ""
    exclusion_reason: str = ""

    @property
    def excluded(self) -> bool:
        """Whether one of the schedule's calendars excludes this tick."""
        return bool(self.excluded_by)

    @classmethod
    def _from_proto(cls, message: schedule_pb2.FireTime) -> FireTime:
        instant = time_from(message, "fire_time")
        assert instant is not None, "the server sent a FireTime without fire_time"
        local = datetime.fromisoformat(message.local_time) if message.local_time else instant
        return cls(
            instant,
            local,
            message.in_dst_gap,
            message.in_dst_fold,
            message.excluded_by if message.excluded else "",
            message.exclusion_reason,
        )


@dataclass(frozen=True)
class SchedulePreview:
    """The next fire times of a schedule and the time zone their local times are in."""

    fire_times: list[FireTime]
    time_zone: str

    @classmethod
    def _from_proto(cls, message: schedule_service_pb2.PreviewScheduleResponse) -> SchedulePreview:
        return cls([FireTime._from_proto(t) for t in message.fire_times], message.time_zone)


@dataclass(frozen=True)
class BackfillResult:
    """The ticks a backfill covered and the names of the executions it queued (none on a dry run)."""

    fire_times: list[FireTime]
    executions: list[str]

    @classmethod
    def _from_proto(cls, message: schedule_service_pb2.BackfillScheduleResponse) -> BackfillResult:
        return cls([FireTime._from_proto(t) for t in message.fire_times], list(message.executions))


# Calendars


class Weekday(NamedIntEnum):
    """A day of the week."""

    MONDAY = calendar_pb2.WEEKDAY_MONDAY
    TUESDAY = calendar_pb2.WEEKDAY_TUESDAY
    WEDNESDAY = calendar_pb2.WEEKDAY_WEDNESDAY
    THURSDAY = calendar_pb2.WEEKDAY_THURSDAY
    FRIDAY = calendar_pb2.WEEKDAY_FRIDAY
    SATURDAY = calendar_pb2.WEEKDAY_SATURDAY
    SUNDAY = calendar_pb2.WEEKDAY_SUNDAY


@dataclass(frozen=True)
class DateRange:
    """Dates from `start` to `end`, both included; `end` None: `start` alone."""

    start: date
    end: date | None = None

    def _to_proto(self) -> calendar_pb2.DateRange:
        end = "" if self.end is None or self.end == self.start else self.end.isoformat()
        return calendar_pb2.DateRange(start_date=self.start.isoformat(), end_date=end)

    @classmethod
    def _from_proto(cls, message: calendar_pb2.DateRange) -> DateRange:
        end = date.fromisoformat(message.end_date) if message.end_date else None
        return cls(date.fromisoformat(message.start_date), end)


@dataclass(frozen=True)
class YearlyDate:
    """A date that comes back every year (12-24)."""

    month: int
    day: int


@dataclass(frozen=True)
class PublicHolidays:
    """The public holidays of a country (`DE`), or of one of its subdivisions (`BY`)."""

    country: str
    subdivision: str = ""


@dataclass(frozen=True)
class TimeRange:
    """Wall-clock times within a day, `HH:MM`: `start` included, `end` (up to `24:00`) not."""

    start: str
    end: str


@dataclass
class Calendar:
    """A named set of days, or of times within days, in one time zone, that schedules skip
    (`exclude_calendars`) or keep to (`only_on_calendars`).

    A day is on it when a day rule names it (`dates`, `yearly_dates`, `weekdays`,
    `public_holidays`); with `time_ranges` only those times of it. `include_calendars` are
    added, `exclude_calendars` taken away (calendar names of the same namespace).
    `name`, `create_time`, `update_time` and `etag` are set by the server.
    """

    name: str = ""
    description: str = ""
    time_zone: str = ""
    dates: list[DateRange] = field(default_factory=list)
    yearly_dates: list[YearlyDate] = field(default_factory=list)
    weekdays: list[Weekday] = field(default_factory=list)
    public_holidays: list[PublicHolidays] = field(default_factory=list)
    time_ranges: list[TimeRange] = field(default_factory=list)
    include_calendars: list[str] = field(default_factory=list)
    exclude_calendars: list[str] = field(default_factory=list)
    create_time: datetime | None = None
    update_time: datetime | None = None
    etag: str = ""

    @property
    def id(self) -> str:
        """The last part of the name."""
        return split_name(self.name)[1]

    @property
    def namespace(self) -> str:
        """The namespace part of the name."""
        return split_name(self.name)[0]

    def _to_proto(self) -> calendar_pb2.Calendar:
        return calendar_pb2.Calendar(
            name=self.name,
            description=self.description,
            time_zone=self.time_zone,
            dates=[d._to_proto() for d in self.dates],
            yearly_dates=[calendar_pb2.YearlyDate(month=y.month, day=y.day) for y in self.yearly_dates],
            weekdays=[enum_to(w) for w in self.weekdays],
            public_holidays=[
                calendar_pb2.PublicHolidays(country=h.country, subdivision=h.subdivision)
                for h in self.public_holidays
            ],
            time_ranges=[
                calendar_pb2.TimeRange(start_time=t.start, end_time=t.end) for t in self.time_ranges
            ],
            include_calendars=self.include_calendars,
            exclude_calendars=self.exclude_calendars,
            etag=self.etag,
        )

    @classmethod
    def _from_proto(cls, message: calendar_pb2.Calendar) -> Calendar:
        return cls(
            name=message.name,
            description=message.description,
            time_zone=message.time_zone,
            dates=[DateRange._from_proto(d) for d in message.dates],
            yearly_dates=[YearlyDate(y.month, y.day) for y in message.yearly_dates],
            weekdays=[w for w in (enum_from(Weekday, v) for v in message.weekdays) if w is not None],
            public_holidays=[PublicHolidays(h.country, h.subdivision) for h in message.public_holidays],
            time_ranges=[TimeRange(t.start_time, t.end_time) for t in message.time_ranges],
            include_calendars=list(message.include_calendars),
            exclude_calendars=list(message.exclude_calendars),
            create_time=time_from(message, "create_time"),
            update_time=time_from(message, "update_time"),
            etag=message.etag,
        )


@dataclass(frozen=True)
class CalendarDay:
    """A day a calendar holds: whole (`time_ranges` empty) or those times; `reason` says why."""

    day: date
    time_ranges: list[TimeRange]
    reason: str


@dataclass(frozen=True)
class CalendarPreview:
    """The days of one year that a calendar holds, in its time zone."""

    year: int
    time_zone: str
    days: list[CalendarDay]

    @classmethod
    def _from_proto(cls, message: calendar_service_pb2.PreviewCalendarResponse) -> CalendarPreview:
        days = [
            CalendarDay(
                date.fromisoformat(d.date),
                [TimeRange(t.start_time, t.end_time) for t in d.time_ranges],
                d.reason,
            )
            for d in message.days
        ]
        return cls(message.year, message.time_zone, days)


# Executions


@dataclass
class CallbackDelivery:
    """The outcome of calling a job's completion callback for one execution."""

    attempts: int = 0
    http_status: int | None = None
    delivered: bool = False
    error: str = ""
    last_attempt_time: datetime | None = None

    @classmethod
    def _from_proto(cls, message: execution_pb2.CallbackDelivery) -> CallbackDelivery:
        return cls(
            attempts=message.attempts,
            http_status=message.http_status if message.HasField("http_status") else None,
            delivered=message.delivered,
            error=message.error,
            last_attempt_time=time_from(message, "last_attempt_time"),
        )


@dataclass
class Execution:
    """One run (one attempt) of a job, with its outcome. Every field is set by the server.

    `output` is filled by `get_execution` (listings leave it empty).
    """

    name: str
    job: str = ""
    schedule: str = ""
    state: ExecutionState | None = None
    trigger: ExecutionTrigger | None = None
    scheduled_time: datetime | None = None
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    attempt: int = 0
    first_attempt: str = ""
    parent_execution: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    http_status: int | None = None
    output: str = ""
    output_truncated: bool = False
    result: Any = None
    error: str = ""
    skip_reason: SkipReason | None = None
    worker: str = ""
    next_attempt_time: datetime | None = None
    callback_delivery: CallbackDelivery | None = None

    @property
    def id(self) -> str:
        """The last part of the name."""
        return split_name(self.name)[1]

    @property
    def namespace(self) -> str:
        """The namespace part of the name."""
        return split_name(self.name)[0]

    @property
    def ended(self) -> bool:
        """True once the execution is in an end state."""
        return self.state is not None and self.state.ended

    @property
    def succeeded(self) -> bool:
        """True if the execution SUCCEEDED."""
        return self.state is ExecutionState.SUCCEEDED

    @property
    def duration(self) -> timedelta | None:
        """How long it ran: end minus start, once both are known."""
        if self.start_time is None or self.end_time is None:
            return None
        return self.end_time - self.start_time

    @classmethod
    def _from_proto(cls, message: execution_pb2.Execution) -> Execution:
        return cls(
            name=message.name,
            job=message.job,
            schedule=message.schedule,
            state=enum_from(ExecutionState, message.state),
            trigger=enum_from(ExecutionTrigger, message.trigger),
            scheduled_time=time_from(message, "scheduled_time"),
            create_time=time_from(message, "create_time"),
            start_time=time_from(message, "start_time"),
            end_time=time_from(message, "end_time"),
            attempt=message.attempt,
            first_attempt=message.first_attempt,
            parent_execution=message.parent_execution,
            arguments=struct_to_dict(message.arguments),
            exit_code=message.exit_code if message.HasField("exit_code") else None,
            http_status=message.http_status if message.HasField("http_status") else None,
            output=message.output,
            output_truncated=message.output_truncated,
            result=value_from(message, "result"),
            error=message.error,
            skip_reason=enum_from(SkipReason, message.skip_reason),
            worker=message.worker,
            next_attempt_time=time_from(message, "next_attempt_time"),
            callback_delivery=(
                CallbackDelivery._from_proto(message.callback_delivery)
                if message.HasField("callback_delivery")
                else None
            ),
        )


@dataclass(frozen=True)
class LogChunk:
    """A piece of an execution's output: `data` starts at byte `offset` of the whole output.

    `final_state` is set on the last chunk of a followed stream: the execution's end state.
    """

    data: str
    offset: int
    stream: LogStream | None = None
    time: datetime | None = None
    final_state: ExecutionState | None = None

    @classmethod
    def _from_proto(cls, message: execution_service_pb2.StreamExecutionLogsResponse) -> LogChunk:
        return cls(
            data=message.data,
            offset=message.offset,
            stream=enum_from(LogStream, message.stream),
            time=time_from(message, "time"),
            final_state=enum_from(ExecutionState, message.final_state),
        )


# Events


class DeadlineKind(NamedIntEnum):
    """Which deadline a tick missed."""

    START_WITHIN = event_pb2.DEADLINE_KIND_START_WITHIN
    FINISH_BY = event_pb2.DEADLINE_KIND_FINISH_BY
    MAX_DURATION = event_pb2.DEADLINE_KIND_MAX_DURATION
    CHECK_IN_GRACE = event_pb2.DEADLINE_KIND_CHECK_IN_GRACE


@dataclass(frozen=True)
class DeadlineMiss:
    """On DEADLINE_MISSED and CHECKIN_MISSED events: the deadline, the tick, when it passed, and
    the tick's execution ("" when it was not dispatched)."""

    kind: DeadlineKind | None
    scheduled_time: datetime | None
    deadline: datetime | None
    execution: str = ""

    @classmethod
    def _from_proto(cls, message: event_pb2.DeadlineMiss) -> DeadlineMiss:
        return cls(
            kind=enum_from(DeadlineKind, message.kind),
            scheduled_time=time_from(message, "scheduled_time"),
            deadline=time_from(message, "deadline"),
            execution=message.execution,
        )


@dataclass
class Event:
    """A committed state change of a job, a schedule or an execution.

    `sequence` only grows across the whole service. One of `execution`, `job_snapshot`
    and `schedule_snapshot` holds the resource right after the change (before, for a
    delete); execution snapshots leave out the output.
    """

    sequence: int
    type: EventType | None = None
    resource: str = ""
    namespace: str = ""
    time: datetime | None = None
    job: str = ""
    schedule: str = ""
    actor: str = ""
    execution: Execution | None = None
    job_snapshot: Job | None = None
    schedule_snapshot: Schedule | None = None
    deadline_miss: DeadlineMiss | None = None

    @classmethod
    def _from_proto(cls, message: event_pb2.Event) -> Event:
        snapshot = message.WhichOneof("snapshot")
        return cls(
            sequence=message.sequence,
            type=enum_from(EventType, message.type),
            resource=message.resource,
            namespace=message.namespace,
            time=time_from(message, "time"),
            job=message.job,
            schedule=message.schedule,
            actor=message.actor,
            execution=Execution._from_proto(message.execution) if snapshot == "execution" else None,
            job_snapshot=Job._from_proto(message.job_snapshot) if snapshot == "job_snapshot" else None,
            schedule_snapshot=(
                Schedule._from_proto(message.schedule_snapshot) if snapshot == "schedule_snapshot" else None
            ),
            deadline_miss=(
                DeadlineMiss._from_proto(message.deadline_miss) if message.HasField("deadline_miss") else None
            ),
        )


# The cluster


@dataclass(frozen=True)
class ConnectedWorker:
    """A remote worker with a stream open to a replica (`cronwire.Worker`)."""

    identity: str
    queues: list[str]
    namespaces: list[str]  # empty: every namespace
    free_slots: int
    running: int
    replica: str
    agent: str
    connect_time: datetime | None
    report_time: datetime | None

    @classmethod
    def _from_proto(cls, message: cluster_pb2.ConnectedWorker) -> ConnectedWorker:
        return cls(
            identity=message.identity,
            queues=list(message.queues),
            namespaces=list(message.namespaces),
            free_slots=message.free_slots,
            running=message.running,
            replica=message.replica,
            agent=message.agent,
            connect_time=time_from(message, "connect_time"),
            report_time=time_from(message, "report_time"),
        )


@dataclass(frozen=True)
class Replica:
    """A server process in the replica registry."""

    id: str
    hostname: str
    pid: int
    version: str
    roles: list[str]
    start_time: datetime | None
    heartbeat_time: datetime | None
    heartbeat_interval: timedelta | None
    alive: bool  # heard from within three heartbeat intervals
    # Its background loops not running (or failing for seconds) at its last heartbeat.
    loops_down: list[str] = field(default_factory=list)

    @classmethod
    def _from_proto(cls, message: cluster_pb2.Replica) -> Replica:
        return cls(
            id=message.id,
            hostname=message.hostname,
            pid=message.pid,
            version=message.version,
            roles=list(message.roles),
            start_time=time_from(message, "start_time"),
            heartbeat_time=time_from(message, "heartbeat_time"),
            heartbeat_interval=duration_from(message, "heartbeat_interval"),
            alive=message.alive,
            loops_down=list(message.loops_down),
        )


@dataclass(frozen=True)
class QueuedExecution:
    """The queued execution due first."""

    name: str
    job: str
    create_time: datetime | None
    scheduled_time: datetime | None

    @classmethod
    def _from_proto(cls, message: cluster_pb2.QueuedExecution) -> QueuedExecution:
        return cls(
            name=message.name,
            job=message.job,
            create_time=time_from(message, "create_time"),
            scheduled_time=time_from(message, "scheduled_time"),
        )


@dataclass(frozen=True)
class SchedulingLag:
    """start_time - scheduled_time over the executions started in `window` (zero without samples)."""

    window: timedelta
    samples: int
    p50: timedelta
    p90: timedelta
    p99: timedelta

    @classmethod
    def _from_proto(cls, message: cluster_pb2.SchedulingLag) -> SchedulingLag:
        return cls(
            window=message.window.ToTimedelta(),
            samples=message.samples,
            p50=message.p50.ToTimedelta(),
            p90=message.p90.ToTimedelta(),
            p99=message.p99.ToTimedelta(),
        )


@dataclass(frozen=True)
class ClusterStatus:
    """The replicas, the queue and the scheduling lag, as the shared database sees them."""

    replicas: list[Replica]
    queued_executions: int
    running_executions: int
    oldest_queued_execution: QueuedExecution | None
    scheduling_lag: SchedulingLag
    server_version: str
    read_time: datetime | None
    # The remote workers connected to any replica, by queue then identity.
    workers: list[ConnectedWorker] = field(default_factory=list)

    @classmethod
    def _from_proto(cls, message: cluster_service_pb2.GetClusterStatusResponse) -> ClusterStatus:
        oldest = message.oldest_queued_execution if message.HasField("oldest_queued_execution") else None
        return cls(
            replicas=[Replica._from_proto(r) for r in message.replicas],
            queued_executions=message.queued_executions,
            running_executions=message.running_executions,
            oldest_queued_execution=QueuedExecution._from_proto(oldest) if oldest is not None else None,
            scheduling_lag=SchedulingLag._from_proto(message.scheduling_lag),
            server_version=message.server_version,
            read_time=time_from(message, "read_time"),
            workers=[ConnectedWorker._from_proto(w) for w in message.workers],
        )
