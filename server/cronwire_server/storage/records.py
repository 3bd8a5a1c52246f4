"""Domain objects <-> the values of their rows (jobs, schedules, executions): row mapping in
one place, for every storage module."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, assert_never

from cronwire_server.core.model import (
    AllOfSpec,
    AnyOfSpec,
    BusinessDaySpec,
    Calendar,
    CallbackDelivery,
    CallbackState,
    CompletionCallback,
    CronSpec,
    DateRange,
    DateSpec,
    Deadlines,
    DependencyCondition,
    DstPolicy,
    Execution,
    ExecutionState,
    ExecutionStats,
    ExecutionTrigger,
    IntervalSpec,
    Job,
    JobDependent,
    JsonObject,
    MisfirePolicy,
    OverlapPolicy,
    PublicHolidays,
    RetentionPolicy,
    RetryPolicy,
    RRuleSpec,
    Schedule,
    SkipReason,
    TimeRange,
    TriggerSpec,
    YearlyDate,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Row


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


def _utc(value: datetime | None) -> datetime | None:
    # Rows read back are UTC already; values just written may carry the caller's zone.
    return None if value is None else value.astimezone(UTC)


def _duration(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def _retry_to_json(policy: RetryPolicy | None) -> JsonObject | None:
    if policy is None:
        return None
    return {
        "max_attempts": policy.max_attempts,
        "initial_backoff_seconds": policy.initial_backoff.total_seconds(),
        "backoff_multiplier": policy.backoff_multiplier,
        "max_backoff_seconds": policy.max_backoff.total_seconds(),
        "jitter": policy.jitter,
    }


def _retry_from_json(data: JsonObject | None) -> RetryPolicy | None:
    if data is None:
        return None
    return RetryPolicy(
        max_attempts=data["max_attempts"],
        initial_backoff=timedelta(seconds=data["initial_backoff_seconds"]),
        backoff_multiplier=data["backoff_multiplier"],
        max_backoff=timedelta(seconds=data["max_backoff_seconds"]),
        jitter=data["jitter"],
    )


def _callback_to_json(callback: CompletionCallback | None) -> JsonObject | None:
    if callback is None:
        return None
    return {"url": callback.url, "states": [s.value for s in callback.states], "secret": callback.secret}


def _callback_from_json(data: JsonObject | None) -> CompletionCallback | None:
    if data is None:
        return None
    states = tuple(ExecutionState(s) for s in data["states"])
    return CompletionCallback(url=data["url"], states=states, secret=data["secret"])


def trigger_to_json(spec: TriggerSpec) -> JsonObject:
    """The stored form of a trigger tree: one key naming the kind, its body as the value."""
    match spec:
        case CronSpec():
            return {"cron": {"expression": spec.expression, "dst_policy": spec.dst_policy.value}}
        case IntervalSpec():
            return {"interval": {"seconds": spec.every.total_seconds()}}
        case DateSpec():
            return {"date": {"run_time": spec.run_time.isoformat()}}
        case AnyOfSpec():
            return {"any_of": [trigger_to_json(t) for t in spec.triggers]}
        case AllOfSpec():
            return {"all_of": [trigger_to_json(t) for t in spec.triggers]}
        case RRuleSpec():
            return {"rrule": {"rule": spec.rule}}
        case BusinessDaySpec():
            body: JsonObject = {"calendar": spec.calendar_id, "day": spec.day, "at_minutes": spec.at_minutes}
            if spec.from_day:
                body["from_day"] = spec.from_day
            if spec.from_date is not None:
                body["from_date"] = spec.from_date.isoformat()
            return {"business_day": body}
        case _:
            assert_never(spec)


def trigger_from_json(data: JsonObject) -> TriggerSpec:
    ((kind, body),) = data.items()
    if kind == "cron":
        # Rows written before DST policies existed behave as DEBIAN, the default.
        return CronSpec(body["expression"], DstPolicy(body.get("dst_policy", DstPolicy.DEBIAN.value)))
    if kind == "interval":
        return IntervalSpec(every=timedelta(seconds=body["seconds"]))
    if kind == "date":
        return DateSpec(run_time=datetime.fromisoformat(body["run_time"]))
    if kind == "any_of":
        return AnyOfSpec(triggers=tuple(trigger_from_json(t) for t in body))
    if kind == "all_of":
        return AllOfSpec(triggers=tuple(trigger_from_json(t) for t in body))
    if kind == "rrule":
        return RRuleSpec(body["rule"])
    if kind == "business_day":
        from_date = date.fromisoformat(body["from_date"]) if body.get("from_date") else None
        return BusinessDaySpec(
            body["calendar"], body["day"], body["at_minutes"], body.get("from_day", 0), from_date
        )
    raise ValueError(f"unknown trigger kind {kind!r} in the database")


def _retention_to_json(policy: RetentionPolicy | None) -> JsonObject | None:
    if policy is None:
        return None
    return {"count": policy.count, "max_age_seconds": _seconds(policy.max_age)}


def retention_from_json(data: JsonObject | None) -> RetentionPolicy | None:
    if data is None:
        return None
    return RetentionPolicy(count=data["count"], max_age=_duration(data["max_age_seconds"]))


def job_fields(job: Job) -> dict[str, Any]:
    """The columns a caller sets (create and update)."""
    return {
        "executor": job.executor,
        "description": job.description,
        # Copies: the returned job is built from these values and must not share the caller's.
        "parameters": copy.deepcopy(job.parameters),
        "timeout_seconds": _seconds(job.timeout),
        "retry_policy": _retry_to_json(job.retry_policy),
        "max_concurrency": job.max_concurrency,
        "dependents": [{"job_id": d.job_id, "condition": d.condition.value} for d in job.dependents],
        "callback": _callback_to_json(job.callback),
        "labels": dict(job.labels),
        "execution_retention": _retention_to_json(job.execution_retention),
        "arguments_schema": copy.deepcopy(job.arguments_schema),
    }


def job_from_record(row: Mapping[Any, Any]) -> Job:
    """A job from a row's mapping, or from the values just written (the same keys)."""
    return Job(
        namespace=row["namespace"],
        id=row["id"],
        executor=row["executor"],
        parameters=row["parameters"],
        description=row["description"],
        timeout=_duration(row["timeout_seconds"]),
        retry_policy=_retry_from_json(row["retry_policy"]),
        max_concurrency=row["max_concurrency"],
        dependents=[
            JobDependent(d["job_id"], DependencyCondition(d["condition"])) for d in row["dependents"]
        ],
        callback=_callback_from_json(row["callback"]),
        labels=row["labels"],
        execution_retention=retention_from_json(row["execution_retention"]),
        arguments_schema=row["arguments_schema"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        etag=row["etag"],
    )


def schedule_fields(schedule: Schedule) -> dict[str, Any]:
    """The columns a caller sets (create and update)."""
    return {
        "job_id": schedule.job_id,
        "trigger": trigger_to_json(schedule.trigger),
        "time_zone": schedule.time_zone,
        "description": schedule.description,
        "start_time": schedule.start_time,
        "end_time": schedule.end_time,
        "jitter_seconds": _seconds(schedule.jitter),
        "misfire_policy": schedule.misfire_policy.value,
        "catchup_window_seconds": schedule.catchup_window.total_seconds(),
        "overlap_policy": schedule.overlap_policy.value,
        "paused": schedule.paused,
        "pause_reason": schedule.pause_reason,
        "arguments": copy.deepcopy(schedule.arguments),
        "next_fire_time": schedule.next_fire_time,
        "resumed_at": schedule.resumed_at,
        "exclude_calendars": list(schedule.exclude_calendars),
        "only_on_calendars": list(schedule.only_on_calendars),
        # NULL when it names none: the schedules a calendar change concerns are the others.
        "calendars": calendars_to_json(schedule.calendars) if schedule.calendars else None,
        "deadlines": deadlines_to_json(schedule.deadlines),
    }


def deadlines_to_json(deadlines: Deadlines | None) -> JsonObject | None:
    """{"start_within": seconds, "finish_by_local": minutes, "finish_by_after": seconds,
    "max_duration": seconds} (unset ones left out); None when none is set."""
    if not deadlines:
        return None
    values = {
        "start_within": _seconds(deadlines.start_within),
        "finish_by_local": deadlines.finish_by_local_minutes,
        "finish_by_after": _seconds(deadlines.finish_by_after),
        "max_duration": _seconds(deadlines.max_duration),
    }
    return {k: v for k, v in values.items() if v is not None}


def deadlines_from_json(values: Mapping[str, Any] | None) -> Deadlines | None:
    if not values:
        return None
    return Deadlines(
        start_within=_duration(values.get("start_within")),
        finish_by_local_minutes=values.get("finish_by_local"),
        finish_by_after=_duration(values.get("finish_by_after")),
        max_duration=_duration(values.get("max_duration")),
    )


def schedule_from_record(row: Mapping[Any, Any]) -> Schedule:
    """A schedule from a row's mapping, or from the values just written (the same keys)."""
    return Schedule(
        namespace=row["namespace"],
        id=row["id"],
        job_id=row["job_id"],
        trigger=trigger_from_json(row["trigger"]),
        time_zone=row["time_zone"],
        description=row["description"],
        start_time=_utc(row["start_time"]),
        end_time=_utc(row["end_time"]),
        jitter=_duration(row["jitter_seconds"]),
        misfire_policy=MisfirePolicy(row["misfire_policy"]),
        catchup_window=timedelta(seconds=row["catchup_window_seconds"]),
        overlap_policy=OverlapPolicy(row["overlap_policy"]),
        paused=row["paused"],
        pause_reason=row["pause_reason"],
        arguments=row["arguments"],
        next_fire_time=_utc(row["next_fire_time"]),
        resumed_at=_utc(row["resumed_at"]),
        create_time=row["create_time"],
        update_time=row["update_time"],
        etag=row["etag"],
        # Event snapshots written before calendars existed lack these keys.
        exclude_calendars=tuple(row.get("exclude_calendars") or ()),
        only_on_calendars=tuple(row.get("only_on_calendars") or ()),
        calendars=calendars_from_json(row.get("calendars") or {}, row["namespace"]),
        deadlines=deadlines_from_json(row.get("deadlines")),
    )


# Calendars


def calendar_rules_to_json(cal: Calendar) -> JsonObject:
    """What a calendar holds (everything but its identity, description and audit fields)."""
    return {
        "time_zone": cal.time_zone,
        "dates": [[d.start.isoformat(), d.end.isoformat()] for d in cal.dates],
        "yearly_dates": [[y.month, y.day] for y in cal.yearly_dates],
        "weekdays": list(cal.weekdays),
        "public_holidays": [[h.country, h.subdivision] for h in cal.public_holidays],
        "time_ranges": [[t.start, t.end] for t in cal.time_ranges],
        "include_calendars": list(cal.include_calendars),
        "exclude_calendars": list(cal.exclude_calendars),
    }


def calendar_rules_from_json(data: JsonObject, namespace: str, calendar_id: str) -> Calendar:
    return Calendar(
        namespace=namespace,
        id=calendar_id,
        time_zone=data["time_zone"],
        dates=tuple(DateRange(date.fromisoformat(a), date.fromisoformat(b)) for a, b in data["dates"]),
        yearly_dates=tuple(YearlyDate(m, d) for m, d in data["yearly_dates"]),
        weekdays=tuple(data["weekdays"]),
        public_holidays=tuple(PublicHolidays(c, s) for c, s in data["public_holidays"]),
        time_ranges=tuple(TimeRange(a, b) for a, b in data["time_ranges"]),
        include_calendars=tuple(data["include_calendars"]),
        exclude_calendars=tuple(data["exclude_calendars"]),
    )


def calendars_to_json(calendars: Mapping[str, Calendar]) -> JsonObject:
    return {calendar_id: calendar_rules_to_json(cal) for calendar_id, cal in sorted(calendars.items())}


def calendars_from_json(data: JsonObject, namespace: str) -> dict[str, Calendar]:
    return {cid: calendar_rules_from_json(rules, namespace, cid) for cid, rules in data.items()}


def calendar_fields(cal: Calendar) -> dict[str, Any]:
    """The columns a caller sets (create and update)."""
    return {"description": cal.description, "rules": calendar_rules_to_json(cal)}


def calendar_from_record(row: Mapping[Any, Any]) -> Calendar:
    cal = calendar_rules_from_json(row["rules"], row["namespace"], row["id"])
    cal.description = row["description"]
    cal.create_time = row["create_time"]
    cal.update_time = row["update_time"]
    cal.etag = row["etag"]
    return cal


# Executions


def execution_from_row(row: Mapping[Any, Any]) -> Execution:
    skip = row["skip_reason"]
    return Execution(
        namespace=row["namespace"],
        id=row["id"],
        job_id=row["job_id"],
        schedule_id=row["schedule_id"],
        state=ExecutionState(row["state"]),
        trigger=ExecutionTrigger(row["trigger"]),
        scheduled_time=row["scheduled_time"],
        due_time=row["due_time"],
        create_time=row["create_time"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        attempt=row["attempt"],
        first_attempt_id=row["first_attempt_id"],
        parent_execution_id=row["parent_execution_id"],
        arguments=row["arguments"],
        exit_code=row["exit_code"],
        http_status=row["http_status"],
        output=row.get("output", ""),
        output_truncated=row["output_truncated"],
        result=row["result"],
        error=row["error"],
        skip_reason=SkipReason(skip) if skip else None,
        worker=row["worker"],
        serial=row["serial"],
        cancel_requested=row["cancel_requested"],
        backfill_id=row["backfill_id"],
        group_limit=row["group_limit"],
        callback=_callback_from_row(row),
    )


def _callback_from_row(row: Mapping[Any, Any]) -> CallbackDelivery | None:
    if row["callback_state"] is None:
        return None
    return CallbackDelivery(
        state=CallbackState(row["callback_state"]),
        attempts=row["callback_attempts"],
        http_status=row["callback_http_status"],
        error=row["callback_error"],
        last_attempt_time=row["callback_last_time"],
    )


def stats_of(row: Mapping[Any, Any], next_run_time: datetime | None) -> ExecutionStats:
    """The statistics read with a job or schedule (no counters row: none yet)."""
    durations = sorted(row["stats_durations"] or ())
    state = row["stats_last_run_state"]
    return ExecutionStats(
        total=int(row["stats_total"] or 0),
        succeeded=int(row["stats_succeeded"] or 0),
        failed=int(row["stats_failed"] or 0),
        last_run_time=row["stats_last_run_time"],
        last_run_state=ExecutionState(state) if state else None,
        next_run_time=next_run_time,
        # The lower median, as a list of even length has no middle element.
        p50_duration=timedelta(seconds=durations[(len(durations) - 1) // 2]) if durations else None,
    )


def job_with_stats(row: Mapping[Any, Any]) -> Job:
    job = job_from_record(row)
    stats = stats_of(row, row["stats_next_run_time"])
    job.stats = replace(stats, calendar_next_run_time=row["stats_calendar_next_run_time"])
    return job


def schedule_with_stats(row: Mapping[Any, Any]) -> Schedule:
    schedule = schedule_from_record(row)
    schedule.stats = stats_of(row, None if schedule.paused else schedule.next_fire_time)
    return schedule


def execution_values(execution: Execution) -> dict[str, Any]:
    """An execution as the values of its row (output left out), for its event snapshot."""
    callback = execution.callback
    return {
        "namespace": execution.namespace,
        "id": execution.id,
        "job_id": execution.job_id,
        "schedule_id": execution.schedule_id,
        "state": execution.state.value,
        "trigger": execution.trigger.value,
        "scheduled_time": execution.scheduled_time,
        "due_time": execution.due_time,
        "create_time": execution.create_time,
        "start_time": execution.start_time,
        "end_time": execution.end_time,
        "attempt": execution.attempt,
        "first_attempt_id": execution.first_attempt_id,
        "parent_execution_id": execution.parent_execution_id,
        "arguments": execution.arguments,
        "exit_code": execution.exit_code,
        "http_status": execution.http_status,
        "output_truncated": execution.output_truncated,
        "result": execution.result,
        "error": execution.error,
        "skip_reason": execution.skip_reason.value if execution.skip_reason else None,
        "worker": execution.worker,
        "lease_expires_at": None,
        "cancel_requested": execution.cancel_requested,
        "serial": execution.serial,
        "backfill_id": execution.backfill_id,
        "group_limit": execution.group_limit,
        "callback_state": callback.state.value if callback else None,
        "callback_attempts": callback.attempts if callback else 0,
        "callback_http_status": callback.http_status if callback else None,
        "callback_error": callback.error if callback else "",
        "callback_last_time": callback.last_attempt_time if callback else None,
        "callback_next_time": None,
    }


def rows_to_executions(rows: Iterable[Row[Any]]) -> list[Execution]:
    return [execution_from_row(r._mapping) for r in rows]
