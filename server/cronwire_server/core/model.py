"""The domain model: jobs, schedules, executions and events as plain dataclasses.

Neither grpc nor SQLAlchemy is imported here; the API layer converts protos to
these and the storage layer converts these to rows.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Generic, TypeAlias, TypeVar

from cronwire_server.core.names import calendar_name, execution_name, job_name, schedule_name

JsonObject: TypeAlias = dict[str, Any]


class DependencyCondition(enum.Enum):
    ON_SUCCESS = "on_success"
    ON_FAILURE = "on_failure"
    ON_COMPLETION = "on_completion"


class ExecutionState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    LOST = "lost"


class ExecutionTrigger(enum.Enum):
    SCHEDULE = "schedule"
    RUN_NOW = "run_now"
    BACKFILL = "backfill"
    DEPENDENCY = "dependency"
    RETRY = "retry"


class SkipReason(enum.Enum):
    OVERLAP = "overlap"
    MISSED = "missed"
    PAUSED = "paused"
    CALENDAR = "calendar"


class DstPolicy(enum.Enum):
    """What a cron trigger does with a wall time a daylight-saving change skips."""

    DEBIAN = "debian"  # it runs at the jump, as Debian cron does
    SKIP = "skip"  # it does not run, as Kubernetes CronJobs do


class MisfirePolicy(enum.Enum):
    SKIP = "skip"
    RUN_ONCE = "run_once"
    RUN_ALL = "run_all"


class OverlapPolicy(enum.Enum):
    SKIP = "skip"
    QUEUE_ONE = "queue_one"
    ALLOW_ALL = "allow_all"
    CANCEL_RUNNING = "cancel_running"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 1
    initial_backoff: timedelta = timedelta(seconds=1)
    backoff_multiplier: float = 2.0
    max_backoff: timedelta = timedelta(hours=1)
    jitter: float = 0.0


@dataclass(frozen=True)
class JobDependent:
    job_id: str
    condition: DependencyCondition = DependencyCondition.ON_SUCCESS


@dataclass(frozen=True)
class CompletionCallback:
    url: str
    states: tuple[ExecutionState, ...] = ()
    # The HMAC secret; never sent back to callers.
    secret: str = ""


@dataclass(frozen=True)
class ExecutionStats:
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    last_run_time: datetime | None = None
    last_run_state: ExecutionState | None = None
    next_run_time: datetime | None = None
    p50_duration: timedelta | None = None
    # A schedule's with deadlines, in GetSchedule: the misses still kept (core.deadlines).
    deadlines_missed: int = 0
    # A job's only, not shown: the earliest stored next fire time of its unpaused schedules that
    # name calendars, a tick their calendars may exclude (next_run_time leaves those schedules
    # out until JobManager has stepped over their exclusions, core.schedules.shown).
    calendar_next_run_time: datetime | None = None


@dataclass
class Job:
    """What to run and how. `namespace` + `id` identify it."""

    namespace: str
    id: str
    executor: str
    parameters: JsonObject
    description: str = ""
    timeout: timedelta | None = None
    retry_policy: RetryPolicy | None = None
    max_concurrency: int = 0
    dependents: list[JobDependent] = field(default_factory=list)
    callback: CompletionCallback | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # Which finished executions are kept; None: the server's policy.
    execution_retention: RetentionPolicy | None = None
    # The JSON Schema its runs' arguments must match (`arguments`); None: any arguments.
    arguments_schema: JsonObject | None = None
    # Output only: set by the store.
    create_time: datetime | None = None
    update_time: datetime | None = None
    etag: str = ""
    stats: ExecutionStats | None = None

    @property
    def name(self) -> str:
        return job_name(self.namespace, self.id)


# Triggers: a small tree of specs, turned into fire times by `triggers.py`.


@dataclass(frozen=True)
class CronSpec:
    expression: str
    dst_policy: DstPolicy = DstPolicy.DEBIAN


@dataclass(frozen=True)
class IntervalSpec:
    every: timedelta


@dataclass(frozen=True)
class DateSpec:
    run_time: datetime


@dataclass(frozen=True)
class AnyOfSpec:
    triggers: tuple[TriggerSpec, ...]


@dataclass(frozen=True)
class AllOfSpec:
    triggers: tuple[TriggerSpec, ...]


@dataclass(frozen=True)
class BusinessDaySpec:
    """The `day`-th business day of each month (negative: counted from the end) at `at_minutes`
    after midnight, wall clock; business days are the days calendar `calendar_id` holds then."""

    calendar_id: str
    day: int
    at_minutes: int = 0
    # Count from this day of the month (forward, or backward for a negative `day`) across the
    # month's end if need be; 0: from the month's first (last) day, within the month.
    from_day: int = 0
    # Fire once, on the `day`-th business day counted from this date (forward, or backward for a
    # negative `day`), instead of every month. None: every month.
    from_date: date | None = None


@dataclass(frozen=True)
class RRuleSpec:
    """An RFC 5545 recurrence (DTSTART, RRULE, RDATE, EXDATE, EXRULE lines), wall-clock times in
    the schedule's time zone."""

    rule: str


TriggerSpec: TypeAlias = (
    CronSpec | IntervalSpec | DateSpec | AnyOfSpec | AllOfSpec | BusinessDaySpec | RRuleSpec
)


class DeadlineKind(enum.Enum):
    START_WITHIN = "start_within"  # LATE
    FINISH_BY = "finish_by"  # MISSED
    MAX_DURATION = "max_duration"  # TOO_LONG
    CHECK_IN_GRACE = "check_in_grace"  # CHECKIN_MISSED


@dataclass(frozen=True)
class Deadlines:
    """A schedule's deadlines (alerts only, see `core.deadlines`); None fields are not set."""

    start_within: timedelta | None = None
    # finish_by: a wall-clock time (minutes after midnight, schedule's zone) or a duration after
    # the tick; at most one is set.
    finish_by_local_minutes: int | None = None
    finish_by_after: timedelta | None = None
    max_duration: timedelta | None = None

    def __bool__(self) -> bool:
        return any(
            v is not None
            for v in (
                self.start_within,
                self.finish_by_local_minutes,
                self.finish_by_after,
                self.max_duration,
            )
        )


@dataclass(frozen=True)
class DeadlineMiss:
    kind: DeadlineKind
    scheduled_time: datetime
    deadline: datetime
    execution_id: str = ""


@dataclass
class Schedule:
    """When a job runs. `namespace` + `id` identify it; `job_id` is in the same namespace."""

    namespace: str
    id: str
    job_id: str
    trigger: TriggerSpec
    time_zone: str = "UTC"
    description: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None
    jitter: timedelta | None = None
    misfire_policy: MisfirePolicy = MisfirePolicy.RUN_ONCE
    catchup_window: timedelta = timedelta(hours=1)
    overlap_policy: OverlapPolicy = OverlapPolicy.SKIP
    paused: bool = False
    pause_reason: str = ""
    arguments: JsonObject = field(default_factory=dict)
    # Maintained by the store and the dispatcher.
    next_fire_time: datetime | None = None
    # When the schedule was last resumed: earlier missed ticks fell while it was paused.
    resumed_at: datetime | None = None
    create_time: datetime | None = None
    update_time: datetime | None = None
    etag: str = ""
    stats: ExecutionStats | None = None
    # Calendar ids in the same namespace: ticks on any of `exclude_calendars`, or off any of
    # `only_on_calendars`, are skipped (SkipReason.CALENDAR).
    exclude_calendars: tuple[str, ...] = ()
    only_on_calendars: tuple[str, ...] = ()
    # Those calendars and every calendar they name, by id, as they were at the last change of
    # the schedule or of one of them: kept with the schedule by the store, so deciding on a
    # tick needs no other read.
    calendars: dict[str, Calendar] = field(default_factory=dict)
    deadlines: Deadlines | None = None


# Calendars: sets of days (and times within days) that schedules skip or keep to; `calendars.py`
# decides what they hold.


@dataclass(frozen=True)
class DateRange:
    """Dates from `start` to `end`, both included."""

    start: date
    end: date


@dataclass(frozen=True)
class YearlyDate:
    month: int
    day: int


@dataclass(frozen=True)
class PublicHolidays:
    """The public holidays of a country (ISO 3166-1 alpha-2), or of one of its subdivisions."""

    country: str
    subdivision: str = ""


@dataclass(frozen=True)
class TimeRange:
    """Wall-clock minutes after midnight, `start` included, `end` (at most 1440) not."""

    start: int
    end: int


@dataclass
class Calendar:
    """A named set of days, or of times within days, in one time zone."""

    namespace: str
    id: str
    time_zone: str = "UTC"
    description: str = ""
    dates: tuple[DateRange, ...] = ()
    yearly_dates: tuple[YearlyDate, ...] = ()
    # ISO weekdays: 1 is Monday, 7 Sunday.
    weekdays: tuple[int, ...] = ()
    public_holidays: tuple[PublicHolidays, ...] = ()
    time_ranges: tuple[TimeRange, ...] = ()
    # Calendar ids in the same namespace: added to this one's times, then taken away.
    include_calendars: tuple[str, ...] = ()
    exclude_calendars: tuple[str, ...] = ()
    create_time: datetime | None = None
    update_time: datetime | None = None
    etag: str = ""

    @property
    def name(self) -> str:
        return calendar_name(self.namespace, self.id)


class CallbackState(enum.Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class CallbackDelivery:
    """The completion callback of one execution: pending until delivered or given up."""

    state: CallbackState
    attempts: int = 0
    http_status: int | None = None
    error: str = ""
    last_attempt_time: datetime | None = None


@dataclass
class Execution:
    """One attempt at running a job."""

    namespace: str
    id: str
    job_id: str
    state: ExecutionState
    trigger: ExecutionTrigger
    scheduled_time: datetime
    schedule_id: str = ""
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    attempt: int = 1
    first_attempt_id: str = ""
    parent_execution_id: str = ""
    arguments: JsonObject = field(default_factory=dict)
    exit_code: int | None = None
    http_status: int | None = None
    output: str = ""
    output_truncated: bool = False
    result: Any = None
    error: str = ""
    skip_reason: SkipReason | None = None
    worker: str = ""
    # When a worker may start it: the tick plus jitter, or a retry's backoff.
    due_time: datetime | None = None
    # A worker starts it only while no other execution of its schedule runs.
    serial: bool = False
    # Set by CancelExecution on a RUNNING execution; its worker stops it.
    cancel_requested: bool = False
    # A backfill's executions run at most group_limit at once.
    backfill_id: str = ""
    group_limit: int = 0
    callback: CallbackDelivery | None = None

    @property
    def ended(self) -> bool:
        return self.state not in (ExecutionState.QUEUED, ExecutionState.RUNNING)

    @property
    def name(self) -> str:
        return execution_name(self.namespace, self.id)

    @property
    def job_name(self) -> str:
        return job_name(self.namespace, self.job_id)

    @property
    def schedule_name(self) -> str:
        """ "" when no schedule fired it."""
        return schedule_name(self.namespace, self.schedule_id) if self.schedule_id else ""


class EventType(enum.Enum):
    EXECUTION_QUEUED = "execution_queued"
    EXECUTION_STARTED = "execution_started"
    EXECUTION_SUCCEEDED = "execution_succeeded"
    EXECUTION_FAILED = "execution_failed"
    EXECUTION_TIMED_OUT = "execution_timed_out"
    EXECUTION_CANCELLED = "execution_cancelled"
    EXECUTION_RETRYING = "execution_retrying"
    EXECUTION_SKIPPED = "execution_skipped"
    EXECUTION_LOST = "execution_lost"
    JOB_CREATED = "job_created"
    JOB_UPDATED = "job_updated"
    JOB_DELETED = "job_deleted"
    SCHEDULE_CREATED = "schedule_created"
    SCHEDULE_UPDATED = "schedule_updated"
    SCHEDULE_PAUSED = "schedule_paused"
    SCHEDULE_RESUMED = "schedule_resumed"
    SCHEDULE_DELETED = "schedule_deleted"
    CALENDAR_CREATED = "calendar_created"
    CALENDAR_UPDATED = "calendar_updated"
    CALENDAR_DELETED = "calendar_deleted"
    DEADLINE_MISSED = "deadline_missed"
    CHECKIN_MISSED = "checkin_missed"
    CHECKIN_SUCCEEDED = "checkin_succeeded"
    CHECKIN_FAILED = "checkin_failed"
    CHECKIN_DELETED = "checkin_deleted"


# The event an execution's arrival in each state is reported as.
STATE_EVENTS = {
    ExecutionState.QUEUED: EventType.EXECUTION_QUEUED,
    ExecutionState.RUNNING: EventType.EXECUTION_STARTED,
    ExecutionState.SUCCEEDED: EventType.EXECUTION_SUCCEEDED,
    ExecutionState.FAILED: EventType.EXECUTION_FAILED,
    ExecutionState.TIMED_OUT: EventType.EXECUTION_TIMED_OUT,
    ExecutionState.CANCELLED: EventType.EXECUTION_CANCELLED,
    ExecutionState.SKIPPED: EventType.EXECUTION_SKIPPED,
    ExecutionState.LOST: EventType.EXECUTION_LOST,
}


@dataclass(frozen=True)
class Event:
    """A committed state change; `sequence` orders every event of the service."""

    sequence: int
    type: EventType
    namespace: str
    resource: str
    time: datetime
    job_id: str = ""
    schedule_id: str = ""
    actor: str = ""
    snapshot: Job | Schedule | Execution | None = None
    deadline_miss: DeadlineMiss | None = None


@dataclass(frozen=True)
class EventFilter:
    namespace: str = ""  # empty: every namespace
    job_id: str = ""
    schedule_id: str = ""
    types: frozenset[EventType] = frozenset()
    # Only these namespaces (the caller's scope); None: no such restriction.
    namespaces: frozenset[str] | None = None

    def matches(self, event: Event) -> bool:
        return (
            (not self.namespace or event.namespace == self.namespace)
            and (self.namespaces is None or event.namespace in self.namespaces)
            and (not self.job_id or event.job_id == self.job_id)
            and (not self.schedule_id or event.schedule_id == self.schedule_id)
            and (not self.types or event.type in self.types)
        )


@dataclass(frozen=True)
class Page:
    """Paging of a list call, already validated: `size` in 1..1000, `after` a decoded cursor."""

    size: int
    after: str | None = None


T = TypeVar("T")


@dataclass(frozen=True)
class Listing(Generic[T]):
    items: list[T]
    # The cursor of the last item when more may follow; None at the end.
    next_after: str | None


# Operations


@dataclass(frozen=True)
class Replica:
    """A running server process, as it registered itself."""

    id: str
    hostname: str
    pid: int
    version: str
    roles: frozenset[str]
    heartbeat_seconds: float  # how often it heartbeats
    started_at: datetime
    heartbeat_at: datetime | None = None  # the database's clock; set by the store
    # Its background loops that were down at its last heartbeat (see `supervisor`).
    loops_down: tuple[str, ...] = ()

    def alive(self, now: datetime, missed: int = 3) -> bool:
        """Heard from within `missed` of its own heartbeat intervals."""
        if self.heartbeat_at is None:
            return False
        return (now - self.heartbeat_at).total_seconds() <= missed * self.heartbeat_seconds


@dataclass(frozen=True)
class LagPercentiles:
    """start_time - scheduled_time, in seconds, over the executions started in a window."""

    samples: int
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0


@dataclass(frozen=True)
class ClusterStatus:
    now: datetime
    replicas: list[Replica]
    queued: int
    running: int
    oldest_queued: Execution | None
    lag: LagPercentiles


@dataclass(frozen=True)
class RetentionPolicy:
    """Which finished executions are kept: per job the newest `count` (0: no limit), and none
    older than `max_age` (None: forever)."""

    count: int = 0
    max_age: timedelta | None = None
