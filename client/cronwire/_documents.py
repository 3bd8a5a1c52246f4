"""Plain documents (JSON/YAML-ready dicts) for the SDK's types, both ways.

The CLI prints these with `-o json|yaml`, and `cronwire apply` reads the same shapes, so
`cronwire jobs get backup -o yaml` is a valid item of an apply file. Times are RFC 3339
strings, durations `10m`-style strings, enum members their names (`RUN_ONCE`), triggers
`{cron: "0 3 * * *"}`, `{every: 5m}`, `{at: <time>}`, `{rrule: "DTSTART:...\\nRRULE:..."}`,
`{business_day: {calendar: ..., day: -1, time_of_day: "17:00"}}`, `{any_of: [...]}`,
`{all_of: [...]}`; calendars' days in the short forms of the CLI's flags or as printed.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from cronwire._calendar_forms import (
    parse_date_range,
    parse_holidays,
    parse_hours,
    parse_weekdays,
    parse_yearly,
)
from cronwire._types import (
    AllOfTrigger,
    AnyOfTrigger,
    BusinessDayTrigger,
    CompletionCallback,
    CronTrigger,
    DateRange,
    DateTrigger,
    Deadlines,
    DependencyCondition,
    DstPolicy,
    ExecutionRetention,
    ExecutionState,
    FireTime,
    IntervalTrigger,
    JobDependent,
    MisfirePolicy,
    OverlapPolicy,
    PublicHolidays,
    RetryPolicy,
    RRuleTrigger,
    TimeRange,
    Trigger,
    Weekday,
    YearlyDate,
)
from cronwire._values import format_duration, format_time, parse_duration, parse_enum, parse_time

E = TypeVar("E", bound=enum.Enum)


class DocumentError(ValueError):
    """A document does not describe a valid value; `path` says where (`jobs[0].timeout`)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


# SDK values -> documents


def trigger_document(trigger: Trigger) -> dict[str, Any]:
    match trigger:
        case CronTrigger(expression, DstPolicy.DEBIAN):
            return {"cron": expression}
        case CronTrigger(expression, dst_policy):
            return {"cron": {"expression": expression, "dst_policy": dst_policy.name}}
        case IntervalTrigger(every):
            return {"every": format_duration(every)}
        case DateTrigger(run_time):
            return {"at": format_time(run_time)}
        case AnyOfTrigger(triggers):
            return {"any_of": [trigger_document(t) for t in triggers]}
        case AllOfTrigger(triggers):
            return {"all_of": [trigger_document(t) for t in triggers]}
        case RRuleTrigger(rule):
            return {"rrule": rule}
        case BusinessDayTrigger(calendar, day, time_of_day, from_day, from_date):
            body: dict[str, Any] = {"calendar": calendar, "day": day, "time_of_day": time_of_day}
            if from_day:
                body["from_day"] = from_day
            if from_date is not None:
                body["from_date"] = from_date.isoformat()
            return {"business_day": body}
    raise TypeError(f"not a trigger: {trigger!r}")


def to_document(value: Any) -> Any:
    """A JSON-ready form of an SDK value (dataclasses, enums, times, durations, containers)."""
    if isinstance(
        value,
        CronTrigger
        | IntervalTrigger
        | DateTrigger
        | AnyOfTrigger
        | AllOfTrigger
        | BusinessDayTrigger
        | RRuleTrigger,
    ):
        return trigger_document(value)
    if isinstance(value, FireTime):  # the local time keeps its UTC offset
        return {
            "fire_time": format_time(value.fire_time),
            "local_time": value.local_time.isoformat(),
            "in_dst_gap": value.in_dst_gap,
            "in_dst_fold": value.in_dst_fold,
            "excluded_by": value.excluded_by,
            "exclusion_reason": value.exclusion_reason,
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_document(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, Mapping):
        return {str(k): to_document(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_document(v) for v in value]
    return value


# Documents -> SDK values


def _expect(value: Any, kind: type | tuple[type, ...], path: str, what: str) -> Any:
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise DocumentError(path, f"must be {what}, got {value!r}")
    if not isinstance(value, kind):
        raise DocumentError(path, f"must be {what}, got {type(value).__name__} {value!r}")
    return value


def read_str(value: Any, path: str) -> str:
    result: str = _expect(value, str, path, "a string")
    return result


def read_int(value: Any, path: str) -> int:
    result: int = _expect(value, int, path, "an integer")
    return result


def read_float(value: Any, path: str) -> float:
    return float(_expect(value, (int, float), path, "a number"))


def read_bool(value: Any, path: str) -> bool:
    result: bool = _expect(value, bool, path, "true or false")
    return result


def read_object(value: Any, path: str) -> dict[str, Any]:
    result = _expect(value, dict, path, "a mapping")
    for key in result:
        read_str(key, f"{path} key")
    return dict(result)


def read_list(value: Any, path: str) -> list[Any]:
    return list(_expect(value, list, path, "a list"))


def read_duration(value: Any, path: str) -> timedelta:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise DocumentError(path, "must not be negative")
        return timedelta(seconds=value)
    try:
        return parse_duration(read_str(value, path))
    except ValueError as error:
        raise DocumentError(path, str(error)) from None


def read_time(value: Any, path: str) -> datetime:
    if isinstance(value, datetime):  # YAML reads unquoted timestamps itself
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    try:
        return parse_time(read_str(value, path))
    except ValueError as error:
        raise DocumentError(path, str(error)) from None


def read_enum(cls: type[E], value: Any, path: str) -> E:
    try:
        return parse_enum(cls, read_str(value, path))
    except ValueError as error:
        raise DocumentError(path, str(error)) from None


def optional(read: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    """`read`, with null passed through as None (null clears a field)."""

    def reader(value: Any, path: str) -> Any:
        return None if value is None else read(value, path)

    return reader


TRIGGER_KINDS = "cron, every, at, business_day, rrule, any_of, all_of"


def read_date(value: Any, path: str) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):  # YAML reads unquoted dates
        return value
    text = read_str(value, path)
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise DocumentError(path, f"{text!r} is not a date of the form YYYY-MM-DD") from None


def _read_time_of_day(value: Any, path: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 17:00 as a number of minutes in base 60 (1020).
        hours, minutes = divmod(value, 60)
        return f"{hours:02d}:{minutes:02d}"
    return read_str(value, path)


def _read_business_day(value: Any, path: str) -> BusinessDayTrigger:
    readers: dict[str, Callable[[Any, str], Any]] = {
        "calendar": read_str,
        "day": read_int,
        "time_of_day": _read_time_of_day,
        "from_day": read_int,
        "from_date": optional(read_date),
    }
    fields = _read_fields(read_object(value, path), readers, path)
    for key in ("calendar", "day"):
        if key not in fields:
            raise DocumentError(f"{path}.{key}", "is required")
    return BusinessDayTrigger(**fields)


def read_trigger(value: Any, path: str) -> Trigger:
    document = read_object(value, path)
    if len(document) != 1:
        raise DocumentError(path, f"must have exactly one of {TRIGGER_KINDS}")
    ((kind, body),) = document.items()
    where = f"{path}.{kind}"
    if kind == "cron":
        if not isinstance(body, dict):
            return CronTrigger(read_str(body, where))
        # The long form, for a policy: {cron: {expression: "30 2 * * *", dst_policy: SKIP}}.
        cron = read_object(body, where)
        unknown = set(cron) - {"expression", "dst_policy"}
        if unknown:
            raise DocumentError(
                where, f"unknown field {sorted(unknown)[0]!r}; expected expression, dst_policy"
            )
        if "expression" not in cron:
            raise DocumentError(f"{where}.expression", "is required")
        policy = cron.get("dst_policy")
        return CronTrigger(
            read_str(cron["expression"], f"{where}.expression"),
            DstPolicy.DEBIAN if policy is None else read_enum(DstPolicy, policy, f"{where}.dst_policy"),
        )
    if kind == "every":
        return IntervalTrigger(read_duration(body, where))
    if kind == "at":
        return DateTrigger(read_time(body, where))
    if kind == "rrule":
        if isinstance(body, dict):
            rule = read_object(body, where)
            if set(rule) != {"rule"}:
                raise DocumentError(where, "must be the rule's text, or {rule: <text>}")
            return RRuleTrigger(read_str(rule["rule"], f"{where}.rule"))
        return RRuleTrigger(read_str(body, where))
    if kind == "business_day":
        return _read_business_day(body, where)
    if kind in ("any_of", "all_of"):
        children = [read_trigger(child, f"{where}[{i}]") for i, child in enumerate(read_list(body, where))]
        return AnyOfTrigger(children) if kind == "any_of" else AllOfTrigger(children)
    raise DocumentError(path, f"unknown trigger {kind!r}; one of {TRIGGER_KINDS}")


def read_retry_policy(value: Any, path: str) -> RetryPolicy:
    document = read_object(value, path)
    readers: dict[str, Callable[[Any, str], Any]] = {
        "max_attempts": read_int,
        "initial_backoff": optional(read_duration),
        "backoff_multiplier": read_float,
        "max_backoff": optional(read_duration),
        "jitter": read_float,
    }
    return RetryPolicy(**_read_fields(document, readers, path))


def read_execution_retention(value: Any, path: str) -> ExecutionRetention:
    document = read_object(value, path)
    readers: dict[str, Callable[[Any, str], Any]] = {
        "max_count": read_int,
        "max_age": optional(read_duration),
    }
    fields = _read_fields(document, readers, path)
    # 0 is no limit by age, as the server stores and returns it: unset.
    fields["max_age"] = fields.get("max_age") or None
    return ExecutionRetention(**fields)


def read_dependents(value: Any, path: str) -> list[JobDependent]:
    dependents = []
    for index, item in enumerate(read_list(value, path)):
        where = f"{path}[{index}]"
        if isinstance(item, str):
            dependents.append(JobDependent(item))
            continue
        fields = _read_fields(
            read_object(item, where),
            {"job": read_str, "condition": optional(lambda v, p: read_enum(DependencyCondition, v, p))},
            where,
        )
        if "job" not in fields:
            raise DocumentError(f"{where}.job", "is required")
        dependents.append(JobDependent(**fields))
    return dependents


def read_callback(value: Any, path: str) -> CompletionCallback:
    readers: dict[str, Callable[[Any, str], Any]] = {
        "url": read_str,
        "states": lambda v, p: [
            read_enum(ExecutionState, s, f"{p}[{i}]") for i, s in enumerate(read_list(v, p))
        ],
        "secret": read_str,
        "secret_set": read_bool,
    }
    fields = _read_fields(read_object(value, path), readers, path)
    fields.pop("secret_set", None)  # output only
    if "url" not in fields:
        raise DocumentError(f"{path}.url", "is required")
    return CompletionCallback(**fields)


def read_labels(value: Any, path: str) -> dict[str, str]:
    return {key: read_str(v, f"{path}.{key}") for key, v in read_object(value, path).items()}


def _read_fields(
    document: Mapping[str, Any], readers: Mapping[str, Callable[[Any, str], Any]], path: str
) -> dict[str, Any]:
    fields = {}
    for key, value in document.items():
        reader = readers.get(key)
        if reader is None:
            known = ", ".join(readers)
            raise DocumentError(f"{path}.{key}" if path else key, f"unknown field; known: {known}")
        fields[key] = reader(value, f"{path}.{key}" if path else key)
    return fields


# The fields of jobs and schedules in documents: readers for the writable ones; the output-only
# ones (what `get -o yaml` prints besides) are accepted and ignored.

JOB_FIELDS: dict[str, Callable[[Any, str], Any]] = {
    "executor": read_str,
    "parameters": optional(read_object),
    "description": optional(read_str),
    "timeout": optional(read_duration),
    "retry_policy": optional(read_retry_policy),
    "max_concurrency": optional(read_int),
    "dependents": optional(read_dependents),
    "callback": optional(read_callback),
    "labels": optional(read_labels),
    "execution_retention": optional(read_execution_retention),
    "arguments_schema": optional(read_object),
}
JOB_OUTPUT_ONLY = frozenset({"create_time", "update_time", "etag", "stats"})


def read_deadlines(value: Any, path: str) -> Deadlines | None:
    """`{start_within: 5m, finish_by: "09:30" | 2h, max_duration: 1h}`, each optional; None when
    it sets none."""

    def finish_by(item: Any, at: str) -> str | timedelta:
        if isinstance(item, str) and ":" in item:
            return item
        return read_duration(item, at)

    fields = _read_fields(
        read_object(value, path),
        {
            "start_within": optional(read_duration),
            "finish_by": optional(finish_by),
            "max_duration": optional(read_duration),
        },
        path,
    )
    deadlines = Deadlines(**fields)
    return deadlines if any(v is not None for v in fields.values()) else None


def read_names(value: Any, path: str) -> list[str]:
    """A list of resource ids or names (one string is a list of one)."""
    if isinstance(value, str):
        return [value]
    return [read_str(item, f"{path}[{i}]") for i, item in enumerate(read_list(value, path))]


SCHEDULE_FIELDS: dict[str, Callable[[Any, str], Any]] = {
    "trigger": read_trigger,
    "description": optional(read_str),
    "time_zone": optional(read_str),
    "start_time": optional(read_time),
    "end_time": optional(read_time),
    "jitter": optional(read_duration),
    "misfire_policy": optional(lambda v, p: read_enum(MisfirePolicy, v, p)),
    "catchup_window": optional(read_duration),
    "overlap_policy": optional(lambda v, p: read_enum(OverlapPolicy, v, p)),
    "arguments": optional(read_object),
    "paused": read_bool,
    "exclude_calendars": optional(read_names),
    "only_on_calendars": optional(read_names),
    "deadlines": optional(lambda v, p: read_deadlines(v, p)),
}
SCHEDULE_OUTPUT_ONLY = frozenset(
    {"next_fire_time", "create_time", "update_time", "etag", "pause_reason", "stats"}
)


# Calendars: each list item in the CLI's short form (`2027-12-24..2027-12-31`, `12-24`, `mon-fri`,
# `DE-BY`, `12:00-13:30`) or as `calendars get -o yaml` prints it (`{start: ..., end: ...}`, ...).


def _short_form(parse: Callable[[str], Any], value: Any, path: str) -> Any:
    try:
        return parse(read_str(value, path))
    except ValueError as error:
        raise DocumentError(path, str(error)) from None


def _read_date_range(value: Any, path: str) -> DateRange:
    if isinstance(value, date) and not isinstance(value, datetime):
        return DateRange(value)
    if isinstance(value, dict):
        fields = _read_fields(
            read_object(value, path), {"start": read_date, "end": optional(read_date)}, path
        )
        if "start" not in fields:
            raise DocumentError(f"{path}.start", "is required")
        return DateRange(**fields)
    result: DateRange = _short_form(parse_date_range, value, path)
    return result


def _read_yearly(value: Any, path: str) -> YearlyDate:
    if isinstance(value, dict):
        fields = _read_fields(read_object(value, path), {"month": read_int, "day": read_int}, path)
        for key in ("month", "day"):
            if key not in fields:
                raise DocumentError(f"{path}.{key}", "is required")
        return YearlyDate(**fields)
    result: YearlyDate = _short_form(parse_yearly, value, path)
    return result


def _read_weekdays(value: Any, path: str) -> list[Weekday]:
    items = [value] if isinstance(value, str) else read_list(value, path)
    days: list[Weekday] = []
    for i, item in enumerate(items):
        where = path if isinstance(value, str) else f"{path}[{i}]"
        for day in _short_form(parse_weekdays, item, where):
            if day not in days:
                days.append(day)
    return days


def _read_holidays(value: Any, path: str) -> PublicHolidays:
    if isinstance(value, dict):
        fields = _read_fields(
            read_object(value, path), {"country": read_str, "subdivision": optional(read_str)}, path
        )
        if "country" not in fields:
            raise DocumentError(f"{path}.country", "is required")
        return PublicHolidays(fields["country"], fields.get("subdivision") or "")
    result: PublicHolidays = _short_form(parse_holidays, value, path)
    return result


def _read_hours(value: Any, path: str) -> TimeRange:
    if isinstance(value, dict):
        readers = {"start": _read_time_of_day, "end": _read_time_of_day}
        fields = _read_fields(read_object(value, path), readers, path)
        for key in ("start", "end"):
            if key not in fields:
                raise DocumentError(f"{path}.{key}", "is required")
        return TimeRange(**fields)
    result: TimeRange = _short_form(parse_hours, value, path)
    return result


def _each(read: Callable[[Any, str], Any]) -> Callable[[Any, str], list[Any]]:
    def reader(value: Any, path: str) -> list[Any]:
        return [read(item, f"{path}[{i}]") for i, item in enumerate(read_list(value, path))]

    return reader


CALENDAR_FIELDS: dict[str, Callable[[Any, str], Any]] = {
    "description": optional(read_str),
    "time_zone": optional(read_str),
    "dates": optional(_each(_read_date_range)),
    "yearly_dates": optional(_each(_read_yearly)),
    "weekdays": optional(_read_weekdays),
    "public_holidays": optional(_each(_read_holidays)),
    "time_ranges": optional(_each(_read_hours)),
    "include_calendars": optional(read_names),
    "exclude_calendars": optional(read_names),
}
CALENDAR_OUTPUT_ONLY = frozenset({"create_time", "update_time", "etag"})


def read_spec(
    document: Any,
    path: str,
    readers: Mapping[str, Callable[[Any, str], Any]],
    output_only: frozenset[str],
    identity: tuple[str, ...],
) -> tuple[dict[str, str], dict[str, Any]]:
    """The identifying fields (`name`, and `job` for schedules) and the writable fields given."""
    body = read_object(document, path)
    ids = {key: read_str(body.pop(key), f"{path}.{key}") for key in identity if key in body}
    for key in output_only:
        body.pop(key, None)
    return ids, _read_fields(body, readers, path)
