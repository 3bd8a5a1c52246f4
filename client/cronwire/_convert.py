"""Conversions between Python values and protobuf well-known types, and resource names."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

E = TypeVar("E", bound=enum.IntEnum)


class NamedIntEnum(enum.IntEnum):
    """An enum of the SDK: compares as the proto's number, prints as its name.

    `repr()` gives `ExecutionState.FAILED`; `str()` and f-strings give `FAILED` (a bare
    IntEnum prints the number, which means nothing to a reader).
    """

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"

    def __str__(self) -> str:
        return self.name

    def __format__(self, format_spec: str) -> str:
        return format(self.name, format_spec)


COLLECTIONS = {
    "job": "jobs",
    "schedule": "schedules",
    "execution": "executions",
    "calendar": "calendars",
    "route": "notificationRoutes",
    "rule": "notificationRules",
    "check_in": "checkIns",
}
ALL_NAMESPACES = "-"


def check_aware(value: datetime, what: str = "datetime") -> datetime:
    """`value` itself; a naive datetime is refused, since its instant is ambiguous."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} {value.isoformat()} has no time zone; give an aware datetime (e.g. UTC)")
    return value


def set_time(out: timestamp_pb2.Timestamp, value: datetime) -> None:
    out.FromDatetime(check_aware(value).astimezone(UTC))


def time_from(message: Message, field: str) -> datetime | None:
    """The aware UTC datetime of a Timestamp field, or None when it is not set."""
    if not message.HasField(field):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=UTC)


def set_duration(out: duration_pb2.Duration, value: timedelta) -> None:
    out.FromTimedelta(value)


def duration_from(message: Message, field: str) -> timedelta | None:
    """The timedelta of a Duration field, or None when it is not set."""
    if not message.HasField(field):
        return None
    duration: duration_pb2.Duration = getattr(message, field)
    return duration.ToTimedelta()


def to_seconds(value: timedelta | float | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def integral(value: Any) -> Any:
    """JSON values with the whole floats that Struct carries turned back into ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    return value


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    result: dict[str, Any] = integral(json_format.MessageToDict(value))
    return result


def dict_to_struct(value: Mapping[str, Any] | None, out: struct_pb2.Struct) -> None:
    if value:
        out.update(dict(value))


def value_from(message: Message, field: str) -> Any:
    """The JSON value of a google.protobuf.Value field; None when it is not set."""
    if not message.HasField(field):
        return None
    return integral(json_format.MessageToDict(getattr(message, field)))


def enum_from(cls: type[E], value: int) -> E | None:
    """The SDK enum member for a proto enum number; None for UNSPECIFIED and unknown numbers."""
    if value == 0:
        return None
    try:
        return cls(value)
    except ValueError:
        return None


def enum_to(value: enum.IntEnum | None) -> Any:
    """The proto enum number of an SDK enum member (typed Any: mypy-protobuf's enum value types)."""
    return 0 if value is None else int(value)


def enums_to(values: Iterable[enum.IntEnum]) -> list[Any]:
    return [int(v) for v in values]


def resource_name(kind: str, value: str, namespace: str) -> str:
    """A full resource name for `value`: a full name stays as it is, an id is put in `namespace`."""
    if not value:
        raise ValueError(f"a {kind} name or id is required")
    if "/" in value:
        return value
    return f"namespaces/{namespace}/{COLLECTIONS[kind]}/{value}"


def parent_name(namespace: str) -> str:
    """`namespaces/{namespace}`; a full parent stays as it is."""
    if namespace.startswith("namespaces/"):
        return namespace
    return f"namespaces/{namespace}"


def split_name(name: str) -> tuple[str, str]:
    """(namespace, id) of a resource name `namespaces/{namespace}/{collection}/{id}`; ("", "") if not one."""
    parts = name.split("/")
    if len(parts) == 4 and parts[0] == "namespaces":
        return parts[1], parts[3]
    return "", ""
