"""Conversions between the cronwire.v1 messages and the domain model, both ways."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from cronwire.v1 import calendar_pb2, event_pb2, execution_pb2, job_pb2, schedule_pb2
from cronwire_server.api.message_cache import MessageCache
from cronwire_server.core import model
from cronwire_server.core.calendars import WEEKDAY_NAMES
from cronwire_server.core.errors import FieldViolation, InvalidArgument
from cronwire_server.core.names import format_name, parse_name
from cronwire_server.core.schedules import shown
from cronwire_server.core.triggers import PreviewTime
from cronwire_server.executors.runtime import storable_json

# Enums: proto value <-> domain member. UNSPECIFIED maps to the documented default.

_DEPENDENCY: dict[Any, model.DependencyCondition] = {
    job_pb2.DEPENDENCY_CONDITION_ON_SUCCESS: model.DependencyCondition.ON_SUCCESS,
    job_pb2.DEPENDENCY_CONDITION_ON_FAILURE: model.DependencyCondition.ON_FAILURE,
    job_pb2.DEPENDENCY_CONDITION_ON_COMPLETION: model.DependencyCondition.ON_COMPLETION,
}
_EXECUTION_STATE: dict[Any, model.ExecutionState] = {
    execution_pb2.EXECUTION_STATE_QUEUED: model.ExecutionState.QUEUED,
    execution_pb2.EXECUTION_STATE_RUNNING: model.ExecutionState.RUNNING,
    execution_pb2.EXECUTION_STATE_SUCCEEDED: model.ExecutionState.SUCCEEDED,
    execution_pb2.EXECUTION_STATE_FAILED: model.ExecutionState.FAILED,
    execution_pb2.EXECUTION_STATE_TIMED_OUT: model.ExecutionState.TIMED_OUT,
    execution_pb2.EXECUTION_STATE_CANCELLED: model.ExecutionState.CANCELLED,
    execution_pb2.EXECUTION_STATE_SKIPPED: model.ExecutionState.SKIPPED,
    execution_pb2.EXECUTION_STATE_LOST: model.ExecutionState.LOST,
}
_MISFIRE: dict[Any, model.MisfirePolicy] = {
    schedule_pb2.MISFIRE_POLICY_SKIP: model.MisfirePolicy.SKIP,
    schedule_pb2.MISFIRE_POLICY_RUN_ONCE: model.MisfirePolicy.RUN_ONCE,
    schedule_pb2.MISFIRE_POLICY_RUN_ALL: model.MisfirePolicy.RUN_ALL,
}
_DST: dict[Any, model.DstPolicy] = {
    schedule_pb2.DST_POLICY_DEBIAN: model.DstPolicy.DEBIAN,
    schedule_pb2.DST_POLICY_SKIP: model.DstPolicy.SKIP,
}
_OVERLAP: dict[Any, model.OverlapPolicy] = {
    schedule_pb2.OVERLAP_POLICY_SKIP: model.OverlapPolicy.SKIP,
    schedule_pb2.OVERLAP_POLICY_QUEUE_ONE: model.OverlapPolicy.QUEUE_ONE,
    schedule_pb2.OVERLAP_POLICY_ALLOW_ALL: model.OverlapPolicy.ALLOW_ALL,
    schedule_pb2.OVERLAP_POLICY_CANCEL_RUNNING: model.OverlapPolicy.CANCEL_RUNNING,
}


def _reverse(mapping: Mapping[Any, Any]) -> dict[Any, Any]:
    return {v: k for k, v in mapping.items()}


_DEPENDENCY_PB, _STATE_PB = _reverse(_DEPENDENCY), _reverse(_EXECUTION_STATE)
_MISFIRE_PB, _OVERLAP_PB, _DST_PB = _reverse(_MISFIRE), _reverse(_OVERLAP), _reverse(_DST)


def _enum(value: int, mapping: Mapping[Any, Any], default: Any, field: str) -> Any:
    if value == 0:
        return default
    try:
        return mapping[value]
    except KeyError:
        raise InvalidArgument.field(field, f"unknown value {value}") from None


def overlap_from_pb(
    value: int, default: model.OverlapPolicy, field: str = "overlap_policy"
) -> model.OverlapPolicy:
    policy: model.OverlapPolicy = _enum(value, _OVERLAP, default, field)
    return policy


def execution_state_to_pb(state: model.ExecutionState) -> Any:
    return _STATE_PB[state]


def execution_state_from_pb(value: int, field: str) -> model.ExecutionState:
    state: model.ExecutionState = _enum(value, _EXECUTION_STATE, None, field)
    if state is None:
        raise InvalidArgument.field(field, "must not be EXECUTION_STATE_UNSPECIFIED")
    return state


# Well-known types


def _integral(value: Any) -> Any:
    # Struct carries every number as a double; give JSON schemas and executors ints back.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    result: dict[str, Any] = _integral(json_format.MessageToDict(value))
    return result


def dict_to_struct(value: dict[str, Any], out: struct_pb2.Struct) -> None:
    if value:
        out.update(value)


# The ranges google.protobuf.Duration and Timestamp define (0001-01-01 to 9999-12-31); values
# outside them come only from hand-made messages, and would overflow the conversions.
MAX_DURATION_SECONDS = 315_576_000_000
MIN_TIMESTAMP_SECONDS, MAX_TIMESTAMP_SECONDS = -62_135_596_800, 253_402_300_799


def duration_from_pb(value: duration_pb2.Duration, field: str) -> timedelta:
    """The timedelta of a Duration; InvalidArgument on `field` outside Duration's range."""
    seconds, nanos = value.seconds, value.nanos
    if (
        abs(seconds) > MAX_DURATION_SECONDS
        or abs(nanos) > 999_999_999
        or (seconds > 0 > nanos)
        or (seconds < 0 < nanos)
    ):
        raise InvalidArgument.field(
            field, f"is not a valid duration (at most {MAX_DURATION_SECONDS}s either way)"
        )
    return value.ToTimedelta()


def time_from_pb(value: timestamp_pb2.Timestamp, field: str) -> datetime:
    """The aware datetime of a Timestamp; InvalidArgument on `field` outside years 1 to 9999."""
    if (
        not MIN_TIMESTAMP_SECONDS <= value.seconds <= MAX_TIMESTAMP_SECONDS
        or not 0 <= value.nanos <= 999_999_999
    ):
        raise InvalidArgument.field(field, "is not a valid time (years 0001 to 9999)")
    return value.ToDatetime(tzinfo=UTC)


def optional_duration(message: Any, field: str, path: str = "") -> timedelta | None:
    """`message.field` if set; violations are reported on `path` (default: `field`)."""
    return duration_from_pb(getattr(message, field), path or field) if message.HasField(field) else None


def optional_time(message: Any, field: str, path: str = "") -> datetime | None:
    if not message.HasField(field):
        return None
    return time_from_pb(getattr(message, field), path or field)


def set_time(out: timestamp_pb2.Timestamp, value: datetime | None) -> None:
    if value is not None:
        out.FromDatetime(value)


def set_duration(out: duration_pb2.Duration, value: timedelta | None) -> None:
    if value is not None:
        out.FromTimedelta(value)


# Jobs


def job_from_pb(message: job_pb2.Job, namespace: str, job_id: str) -> model.Job:
    """The domain job for a Job message (its `name` is not read: callers pass the id)."""
    violations: list[FieldViolation] = []
    dependents: list[model.JobDependent] = []
    for index, dependent in enumerate(message.dependents):
        field = f"dependents[{index}]"
        try:
            target = parse_name(dependent.job, "job", f"{field}.job")
            if target.namespace != namespace:
                raise InvalidArgument.field(f"{field}.job", "must be a job of the same namespace")
            condition = _enum(
                dependent.condition, _DEPENDENCY, model.DependencyCondition.ON_SUCCESS, f"{field}.condition"
            )
            dependents.append(model.JobDependent(target.id, condition))
        except InvalidArgument as error:
            violations.extend(error.violations)
    callback = None
    if message.HasField("callback"):
        states = []
        for index, state in enumerate(message.callback.states):
            try:
                states.append(execution_state_from_pb(state, f"callback.states[{index}]"))
            except InvalidArgument as error:
                violations.extend(error.violations)
        callback = model.CompletionCallback(message.callback.url, tuple(states), message.callback.secret)
    retry = None
    if message.HasField("retry_policy"):
        policy = message.retry_policy
        defaults = model.RetryPolicy()
        retry = model.RetryPolicy(
            max_attempts=policy.max_attempts or defaults.max_attempts,
            initial_backoff=optional_duration(policy, "initial_backoff", "retry_policy.initial_backoff")
            or defaults.initial_backoff,
            backoff_multiplier=policy.backoff_multiplier or defaults.backoff_multiplier,
            max_backoff=optional_duration(policy, "max_backoff", "retry_policy.max_backoff")
            or defaults.max_backoff,
            jitter=policy.jitter,
        )
    if violations:
        raise InvalidArgument(violations)
    timeout = optional_duration(message, "timeout")
    retention = None
    if message.HasField("execution_retention"):
        kept = message.execution_retention
        retention = model.RetentionPolicy(
            count=kept.max_count,
            max_age=optional_duration(kept, "max_age", "execution_retention.max_age") or None,
        )
    return model.Job(
        namespace=namespace,
        id=job_id,
        executor=message.executor,
        parameters=struct_to_dict(message.parameters),
        description=message.description,
        timeout=timeout or None,
        retry_policy=retry,
        max_concurrency=message.max_concurrency,
        dependents=dependents,
        callback=callback,
        labels=dict(message.labels),
        execution_retention=retention,
        arguments_schema=struct_to_dict(message.arguments_schema)
        if message.HasField("arguments_schema")
        else None,
    )


def stats_to_pb(stats: model.ExecutionStats, out: execution_pb2.ExecutionStats) -> None:
    out.total, out.succeeded, out.failed = stats.total, stats.succeeded, stats.failed
    set_time(out.last_run_time, stats.last_run_time)
    if stats.last_run_state is not None:
        out.last_run_state = _STATE_PB[stats.last_run_state]
    set_time(out.next_run_time, stats.next_run_time)
    set_duration(out.p50_duration, stats.p50_duration)
    out.deadlines_missed = stats.deadlines_missed


# Jobs as converted, by version (see `message_cache`); statistics are set on each copy.
_JOBS: MessageCache[job_pb2.Job] = MessageCache()


def job_to_pb(job: model.Job) -> job_pb2.Job:
    message = job_pb2.Job()
    if job.etag:
        _JOBS.copy((job.namespace, job.id, job.etag), lambda: _job_message(job), message)
    else:
        message.CopyFrom(_job_message(job))
    if job.stats is not None:
        stats_to_pb(job.stats, message.stats)
    return message


def _job_message(job: model.Job) -> job_pb2.Job:
    """`job` as a message, without its statistics."""
    message = job_pb2.Job(
        name=format_name("job", job.namespace, job.id),
        description=job.description,
        executor=job.executor,
        max_concurrency=job.max_concurrency,
        labels=job.labels,
        etag=job.etag,
    )
    dict_to_struct(job.parameters, message.parameters)
    set_duration(message.timeout, job.timeout)
    if job.retry_policy is not None:
        policy = job.retry_policy
        message.retry_policy.max_attempts = policy.max_attempts
        message.retry_policy.initial_backoff.FromTimedelta(policy.initial_backoff)
        message.retry_policy.backoff_multiplier = policy.backoff_multiplier
        message.retry_policy.max_backoff.FromTimedelta(policy.max_backoff)
        message.retry_policy.jitter = policy.jitter
    for dependent in job.dependents:
        message.dependents.add(
            job=format_name("job", job.namespace, dependent.job_id),
            condition=_DEPENDENCY_PB[dependent.condition],
        )
    if job.callback is not None:
        message.callback.url = job.callback.url
        message.callback.states.extend(_STATE_PB[s] for s in job.callback.states)
        # The secret never leaves the server.
        message.callback.secret_set = bool(job.callback.secret)
    if job.execution_retention is not None:
        message.execution_retention.max_count = job.execution_retention.count
        set_duration(message.execution_retention.max_age, job.execution_retention.max_age)
    if job.arguments_schema is not None:
        dict_to_struct(job.arguments_schema, message.arguments_schema)
    set_time(message.create_time, job.create_time)
    set_time(message.update_time, job.update_time)
    return message


# Executions

_TRIGGER_PB = {
    model.ExecutionTrigger.SCHEDULE: execution_pb2.EXECUTION_TRIGGER_SCHEDULE,
    model.ExecutionTrigger.RUN_NOW: execution_pb2.EXECUTION_TRIGGER_RUN_NOW,
    model.ExecutionTrigger.BACKFILL: execution_pb2.EXECUTION_TRIGGER_BACKFILL,
    model.ExecutionTrigger.DEPENDENCY: execution_pb2.EXECUTION_TRIGGER_DEPENDENCY,
    model.ExecutionTrigger.RETRY: execution_pb2.EXECUTION_TRIGGER_RETRY,
}
_SKIP_PB = {
    model.SkipReason.OVERLAP: execution_pb2.SKIP_REASON_OVERLAP,
    model.SkipReason.MISSED: execution_pb2.SKIP_REASON_MISSED,
    model.SkipReason.PAUSED: execution_pb2.SKIP_REASON_PAUSED,
    model.SkipReason.CALENDAR: execution_pb2.SKIP_REASON_CALENDAR,
}


def execution_to_pb(execution: model.Execution) -> execution_pb2.Execution:
    ns = execution.namespace
    message = execution_pb2.Execution(
        name=format_name("execution", ns, execution.id),
        job=format_name("job", ns, execution.job_id),
        schedule=format_name("schedule", ns, execution.schedule_id) if execution.schedule_id else "",
        state=_STATE_PB[execution.state],
        trigger=_TRIGGER_PB[execution.trigger],
        attempt=execution.attempt,
        first_attempt=format_name("execution", ns, execution.first_attempt_id)
        if execution.first_attempt_id
        else "",
        parent_execution=(
            format_name("execution", ns, execution.parent_execution_id)
            if execution.parent_execution_id
            else ""
        ),
        output=execution.output,
        output_truncated=execution.output_truncated,
        error=execution.error,
        worker=execution.worker,
    )
    set_time(message.scheduled_time, execution.scheduled_time)
    set_time(message.create_time, execution.create_time)
    set_time(message.start_time, execution.start_time)
    set_time(message.end_time, execution.end_time)
    dict_to_struct(execution.arguments, message.arguments)
    if execution.exit_code is not None:
        message.exit_code = execution.exit_code
    if execution.http_status is not None:
        message.http_status = execution.http_status
    if execution.result is not None:
        _set_result(message.result, execution.result)
    if execution.skip_reason is not None:
        message.skip_reason = _SKIP_PB[execution.skip_reason]
    if execution.state is model.ExecutionState.QUEUED and execution.trigger is model.ExecutionTrigger.RETRY:
        set_time(message.next_attempt_time, execution.due_time)
    if execution.callback is not None:
        delivery = message.callback_delivery
        delivery.attempts = execution.callback.attempts
        delivery.delivered = execution.callback.state is model.CallbackState.DELIVERED
        delivery.error = execution.callback.error
        if execution.callback.http_status is not None:
            delivery.http_status = execution.callback.http_status
        set_time(delivery.last_attempt_time, execution.callback.last_attempt_time)
        delivery.SetInParent()
    return message


# Schedules


def trigger_from_pb(
    message: schedule_pb2.Trigger, field: str = "trigger", namespace: str = ""
) -> model.TriggerSpec:
    """The domain trigger; a business day's calendar must be of `namespace` (the schedule's)."""
    kind = message.WhichOneof("kind")
    if kind == "business_day":
        where = f"{field}.business_day"
        body = message.business_day
        ids = calendar_ids([body.calendar], namespace, f"{where}.calendar") if body.calendar else ()
        if not ids:
            raise InvalidArgument.field(f"{where}.calendar", "is required: the calendar of business days")
        minutes = _minutes(body.time_of_day, f"{where}.time_of_day") if body.time_of_day else 0
        from_date = _date(body.from_date, f"{where}.from_date") if body.from_date else None
        return model.BusinessDaySpec(ids[0], body.day, minutes, body.from_day, from_date)
    if kind == "cron":
        policy = _enum(message.cron.dst_policy, _DST, model.DstPolicy.DEBIAN, f"{field}.cron.dst_policy")
        return model.CronSpec(message.cron.expression, policy)
    if kind == "interval":
        return model.IntervalSpec(duration_from_pb(message.interval.every, f"{field}.interval.every"))
    if kind == "rrule":
        return model.RRuleSpec(message.rrule.rule)
    if kind == "date":
        if not message.date.HasField("run_time"):
            raise InvalidArgument.field(f"{field}.date.run_time", "is required")
        return model.DateSpec(time_from_pb(message.date.run_time, f"{field}.date.run_time"))
    if kind in ("any_of", "all_of"):
        children = getattr(message, kind).triggers
        specs = tuple(
            trigger_from_pb(child, f"{field}.{kind}.triggers[{index}]", namespace)
            for index, child in enumerate(children)
        )
        return model.AnyOfSpec(specs) if kind == "any_of" else model.AllOfSpec(specs)
    raise InvalidArgument.field(
        field, "is required: set one of cron, interval, date, business_day, rrule, any_of, all_of"
    )


def trigger_to_pb(spec: model.TriggerSpec, out: schedule_pb2.Trigger, namespace: str = "") -> None:
    match spec:
        case model.RRuleSpec(rule):
            out.rrule.rule = rule
        case model.BusinessDaySpec(calendar_id, day, at_minutes, from_day, from_date):
            out.business_day.calendar = format_name("calendar", namespace, calendar_id)
            out.business_day.day = day
            out.business_day.time_of_day = _format_minutes(at_minutes)
            out.business_day.from_day = from_day
            out.business_day.from_date = from_date.isoformat() if from_date is not None else ""
        case model.CronSpec(expression, dst_policy):
            out.cron.expression = expression
            out.cron.dst_policy = _DST_PB[dst_policy]
        case model.IntervalSpec(every):
            out.interval.every.FromTimedelta(every)
        case model.DateSpec(run_time):
            out.date.run_time.FromDatetime(run_time)
        case model.AnyOfSpec(triggers) | model.AllOfSpec(triggers):
            target = out.any_of if isinstance(spec, model.AnyOfSpec) else out.all_of
            target.SetInParent()
            for child in triggers:
                trigger_to_pb(child, target.triggers.add(), namespace)


def schedule_from_pb(message: schedule_pb2.Schedule, namespace: str, schedule_id: str) -> model.Schedule:
    """The domain schedule for a Schedule message (its `name` is not read)."""
    violations: list[FieldViolation] = []
    job_id = ""
    try:
        target = parse_name(message.job, "job", "job")
        if target.namespace != namespace:
            raise InvalidArgument.field("job", "must be a job of the schedule's namespace")
        job_id = target.id
    except InvalidArgument as error:
        violations.extend(error.violations)
    trigger: model.TriggerSpec = model.CronSpec("")
    try:
        trigger = trigger_from_pb(message.trigger, namespace=namespace)
    except InvalidArgument as error:
        violations.extend(error.violations)
    try:
        misfire = _enum(message.misfire_policy, _MISFIRE, model.MisfirePolicy.RUN_ONCE, "misfire_policy")
        overlap = _enum(message.overlap_policy, _OVERLAP, model.OverlapPolicy.SKIP, "overlap_policy")
    except InvalidArgument as error:
        violations.extend(error.violations)
    references: dict[str, tuple[str, ...]] = {}
    for field in ("exclude_calendars", "only_on_calendars"):
        try:
            references[field] = calendar_ids(getattr(message, field), namespace, field)
        except InvalidArgument as error:
            violations.extend(error.violations)
    if violations:
        raise InvalidArgument(violations)
    defaults = model.Schedule(namespace="", id="", job_id="", trigger=trigger)
    return model.Schedule(
        namespace=namespace,
        id=schedule_id,
        job_id=job_id,
        trigger=trigger,
        time_zone=message.time_zone or defaults.time_zone,
        description=message.description,
        start_time=optional_time(message, "start_time"),
        end_time=optional_time(message, "end_time"),
        jitter=optional_duration(message, "jitter") or None,
        misfire_policy=misfire,
        catchup_window=optional_duration(message, "catchup_window") or defaults.catchup_window,
        overlap_policy=overlap,
        paused=message.paused,
        pause_reason=message.pause_reason,
        arguments=struct_to_dict(message.arguments),
        exclude_calendars=references["exclude_calendars"],
        only_on_calendars=references["only_on_calendars"],
        deadlines=deadlines_from_pb(message),
    )


def deadlines_from_pb(message: schedule_pb2.Schedule) -> model.Deadlines | None:
    """The schedule's deadlines, or None when it sets none; InvalidArgument naming the field."""
    if not message.HasField("deadlines"):
        return None
    given = message.deadlines
    positive: dict[str, timedelta | None] = {}
    for field in ("start_within", "max_duration"):
        value = optional_duration(given, field, f"deadlines.{field}")
        if value is not None and value <= timedelta(0):
            raise InvalidArgument.field(f"deadlines.{field}", "must be positive")
        positive[field] = value
    local: int | None = None
    after: timedelta | None = None
    form = given.finish_by.WhichOneof("deadline") if given.HasField("finish_by") else None
    if form == "local_time":
        local = _minutes(given.finish_by.local_time, "deadlines.finish_by.local_time") % (24 * 60)
    elif form == "after_tick":
        after = duration_from_pb(given.finish_by.after_tick, "deadlines.finish_by.after_tick")
        if after <= timedelta(0):
            raise InvalidArgument.field("deadlines.finish_by.after_tick", "must be positive")
    return (
        model.Deadlines(
            start_within=positive["start_within"],
            finish_by_local_minutes=local,
            finish_by_after=after,
            max_duration=positive["max_duration"],
        )
        or None
    )


def deadlines_to_pb(deadlines: model.Deadlines, out: schedule_pb2.ScheduleDeadlines) -> None:
    if deadlines.start_within is not None:
        set_duration(out.start_within, deadlines.start_within)
    if deadlines.max_duration is not None:
        set_duration(out.max_duration, deadlines.max_duration)
    if deadlines.finish_by_local_minutes is not None:
        out.finish_by.local_time = _format_minutes(deadlines.finish_by_local_minutes)
    elif deadlines.finish_by_after is not None:
        set_duration(out.finish_by.after_tick, deadlines.finish_by_after)


def schedule_to_pb(schedule: model.Schedule) -> schedule_pb2.Schedule:
    message = schedule_pb2.Schedule(
        name=format_name("schedule", schedule.namespace, schedule.id),
        job=format_name("job", schedule.namespace, schedule.job_id),
        description=schedule.description,
        time_zone=schedule.time_zone,
        misfire_policy=_MISFIRE_PB[schedule.misfire_policy],
        overlap_policy=_OVERLAP_PB[schedule.overlap_policy],
        paused=schedule.paused,
        pause_reason=schedule.pause_reason,
        etag=schedule.etag,
    )
    trigger_to_pb(schedule.trigger, message.trigger, schedule.namespace)
    set_time(message.start_time, schedule.start_time)
    set_time(message.end_time, schedule.end_time)
    set_duration(message.jitter, schedule.jitter)
    set_duration(message.catchup_window, schedule.catchup_window)
    dict_to_struct(schedule.arguments, message.arguments)
    set_time(message.next_fire_time, schedule.next_fire_time)
    set_time(message.create_time, schedule.create_time)
    set_time(message.update_time, schedule.update_time)
    if schedule.stats is not None:
        stats_to_pb(schedule.stats, message.stats)
    message.exclude_calendars.extend(
        format_name("calendar", schedule.namespace, c) for c in schedule.exclude_calendars
    )
    message.only_on_calendars.extend(
        format_name("calendar", schedule.namespace, c) for c in schedule.only_on_calendars
    )
    if schedule.deadlines:
        deadlines_to_pb(schedule.deadlines, message.deadlines)
    return message


def fire_time_to_pb(preview: PreviewTime, namespace: str = "") -> schedule_pb2.FireTime:
    message = schedule_pb2.FireTime(
        local_time=preview.local_time.isoformat(),
        in_dst_gap=preview.in_dst_gap,
        in_dst_fold=preview.in_dst_fold,
        excluded=bool(preview.excluded_by),
        excluded_by=format_name("calendar", namespace, preview.excluded_by) if preview.excluded_by else "",
        exclusion_reason=preview.exclusion_reason,
    )
    message.fire_time.FromDatetime(preview.fire_time)
    return message


# Calendars

_WEEKDAYS = {getattr(calendar_pb2, f"WEEKDAY_{n.upper()}"): i for i, n in WEEKDAY_NAMES.items()}


def calendar_ids(values: Any, namespace: str, field: str) -> tuple[str, ...]:
    """Calendar resource names of `namespace` -> their ids, each once; InvalidArgument naming
    `field[i]` for a name that is not one."""
    ids: list[str] = []
    for index, value in enumerate(values):
        path = f"{field}[{index}]"
        parsed = parse_name(value, "calendar", path)
        if parsed.namespace != namespace:
            raise InvalidArgument.field(path, f"{value!r} is not a calendar of namespace {namespace!r}")
        if parsed.id in ids:
            raise InvalidArgument.field(path, f"{value!r} is named twice")
        ids.append(parsed.id)
    return tuple(ids)


def _date(value: str, field: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument.field(field, f"{value!r} is not a date of the form YYYY-MM-DD") from None


def _minutes(value: str, field: str) -> int:
    hours, sep, minutes = value.partition(":")
    if sep and hours.isdigit() and minutes.isdigit() and len(minutes) == 2 and len(hours) <= 2:
        total = int(hours) * 60 + int(minutes)
        if int(minutes) < 60 and total <= 24 * 60:
            return total
    raise InvalidArgument.field(field, f"{value!r} is not a time of the form HH:MM (00:00 to 24:00)")


def _format_minutes(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def calendar_from_pb(message: calendar_pb2.Calendar, namespace: str, calendar_id: str) -> model.Calendar:
    """The domain calendar for a Calendar message (its `name` is not read); InvalidArgument naming
    every field that cannot be read."""
    violations: list[FieldViolation] = []

    def attempt(read: Any, *args: Any) -> Any:
        try:
            return read(*args)
        except InvalidArgument as error:
            violations.extend(error.violations)
            return None

    dates = []
    for i, span in enumerate(message.dates):
        start = attempt(_date, span.start_date, f"dates[{i}].start_date")
        end = attempt(_date, span.end_date, f"dates[{i}].end_date") if span.end_date else start
        if start is not None and end is not None:
            dates.append(model.DateRange(start, end))
    weekdays = []
    for i, value in enumerate(message.weekdays):
        if value not in _WEEKDAYS:
            violations.append(FieldViolation(f"weekdays[{i}]", f"unknown or unspecified weekday {value}"))
        else:
            weekdays.append(_WEEKDAYS[value])
    ranges = []
    for i, hours in enumerate(message.time_ranges):
        start_minutes = attempt(_minutes, hours.start_time, f"time_ranges[{i}].start_time")
        end_minutes = attempt(_minutes, hours.end_time, f"time_ranges[{i}].end_time")
        if start_minutes is not None and end_minutes is not None:
            ranges.append(model.TimeRange(start_minutes, end_minutes))
    included = attempt(calendar_ids, message.include_calendars, namespace, "include_calendars") or ()
    excluded = attempt(calendar_ids, message.exclude_calendars, namespace, "exclude_calendars") or ()
    if violations:
        raise InvalidArgument(violations)
    return model.Calendar(
        namespace=namespace,
        id=calendar_id,
        time_zone=message.time_zone or "UTC",
        description=message.description,
        dates=tuple(dates),
        yearly_dates=tuple(model.YearlyDate(y.month, y.day) for y in message.yearly_dates),
        weekdays=tuple(weekdays),
        public_holidays=tuple(
            model.PublicHolidays(h.country, h.subdivision) for h in message.public_holidays
        ),
        time_ranges=tuple(ranges),
        include_calendars=included,
        exclude_calendars=excluded,
    )


def time_range_to_pb(span: model.TimeRange) -> calendar_pb2.TimeRange:
    return calendar_pb2.TimeRange(start_time=_format_minutes(span.start), end_time=_format_minutes(span.end))


def calendar_to_pb(cal: model.Calendar) -> calendar_pb2.Calendar:
    weekday_pb = _reverse(_WEEKDAYS)
    message = calendar_pb2.Calendar(
        name=format_name("calendar", cal.namespace, cal.id),
        description=cal.description,
        time_zone=cal.time_zone,
        dates=[
            calendar_pb2.DateRange(
                start_date=d.start.isoformat(), end_date="" if d.end == d.start else d.end.isoformat()
            )
            for d in cal.dates
        ],
        yearly_dates=[calendar_pb2.YearlyDate(month=y.month, day=y.day) for y in cal.yearly_dates],
        weekdays=[weekday_pb[w] for w in cal.weekdays],
        public_holidays=[
            calendar_pb2.PublicHolidays(country=h.country, subdivision=h.subdivision)
            for h in cal.public_holidays
        ],
        time_ranges=[time_range_to_pb(t) for t in cal.time_ranges],
        include_calendars=[format_name("calendar", cal.namespace, c) for c in cal.include_calendars],
        exclude_calendars=[format_name("calendar", cal.namespace, c) for c in cal.exclude_calendars],
        etag=cal.etag,
    )
    set_time(message.create_time, cal.create_time)
    set_time(message.update_time, cal.update_time)
    return message


# Events

_EVENT_TYPE_PB = {t: getattr(event_pb2, f"EVENT_TYPE_{t.name}") for t in model.EventType}
_EVENT_TYPE = {v: k for k, v in _EVENT_TYPE_PB.items()}


def event_type_from_pb(value: int, field: str) -> model.EventType:
    try:
        return _EVENT_TYPE[value]
    except KeyError:
        raise InvalidArgument.field(field, f"unknown or unspecified event type {value}") from None


def _set_result(message: struct_pb2.Value, result: Any) -> None:
    """A run's result as protobuf. One stored before results were made storable that protobuf
    cannot hold (an integer beyond a double's range) is sent as it would be stored now."""
    try:
        json_format.ParseDict(result, message)
    except (OverflowError, json_format.ParseError):
        message.Clear()
        json_format.ParseDict(storable_json(result), message)


def event_to_pb(event: model.Event) -> event_pb2.Event:
    message = event_pb2.Event(
        sequence=event.sequence,
        type=_EVENT_TYPE_PB[event.type],
        resource=event.resource,
        namespace=event.namespace,
        job=format_name("job", event.namespace, event.job_id) if event.job_id else "",
        schedule=format_name("schedule", event.namespace, event.schedule_id) if event.schedule_id else "",
        actor=event.actor,
    )
    set_time(message.time, event.time)
    snapshot = event.snapshot
    if isinstance(snapshot, model.Execution):
        message.execution.CopyFrom(execution_to_pb(snapshot))
    elif isinstance(snapshot, model.Job):
        message.job_snapshot.CopyFrom(job_to_pb(snapshot))
    elif isinstance(snapshot, model.Schedule):
        # Its next fire time as GetSchedule shows it: the next tick that runs.
        message.schedule_snapshot.CopyFrom(schedule_to_pb(shown(snapshot)))
    miss = event.deadline_miss
    if miss is not None:
        message.deadline_miss.kind = _DEADLINE_KIND_PB[miss.kind]
        set_time(message.deadline_miss.scheduled_time, miss.scheduled_time)
        set_time(message.deadline_miss.deadline, miss.deadline)
        if miss.execution_id:
            message.deadline_miss.execution = format_name("execution", event.namespace, miss.execution_id)
    return message


_DEADLINE_KIND_PB = {k: getattr(event_pb2, f"DEADLINE_KIND_{k.name}") for k in model.DeadlineKind}
