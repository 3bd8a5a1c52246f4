"""Resource names (`namespaces/{namespace}/jobs/{job}`, `keys/{key}`) and the ids inside them:
every name is formatted and parsed here."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from cronwire_server.core.errors import InvalidArgument

# AIP-122 ids: lowercase letters, digits and hyphens, starting with a letter.
ID_PATTERN = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
ID_RULE = "1 to 63 lowercase letters, digits or hyphens, starting with a letter, not ending with a hyphen"

COLLECTIONS = {
    "job": "jobs",
    "schedule": "schedules",
    "execution": "executions",
    "calendar": "calendars",
    "route": "notificationRoutes",
    "rule": "notificationRules",
    "incident": "incidents",
    "delivery": "notificationDeliveries",
    "check_in": "checkIns",
}
KEYS = "keys"


@dataclass(frozen=True)
class ResourceName:
    namespace: str
    id: str


def check_id(value: str, field: str) -> str:
    if not ID_PATTERN.match(value):
        raise InvalidArgument.field(field, f"{value!r} is not a valid id: {ID_RULE}")
    return value


def new_id(prefix: str) -> str:
    """A random id for callers that do not choose one."""
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


def parse_parent(value: str, field: str = "parent") -> str:
    """`namespaces/{namespace}` -> the namespace."""
    parts = value.split("/")
    if len(parts) != 2 or parts[0] != "namespaces":
        raise InvalidArgument.field(field, f"{value!r} is not of the form namespaces/{{namespace}}")
    return check_id(parts[1], field)


def parse_name(value: str, kind: str, field: str = "name") -> ResourceName:
    """`namespaces/{namespace}/{collection}/{id}` -> its parts, for a resource of `kind`."""
    collection = COLLECTIONS[kind]
    parts = value.split("/")
    if len(parts) != 4 or parts[0] != "namespaces" or parts[2] != collection:
        raise InvalidArgument.field(
            field, f"{value!r} is not a {kind} name of the form namespaces/{{namespace}}/{collection}/{{id}}"
        )
    check_id(parts[1], field)
    if kind == "execution":
        if not parts[3]:
            raise InvalidArgument.field(field, "the execution id is empty")
    else:
        check_id(parts[3], field)
    return ResourceName(parts[1], parts[3])


def format_name(kind: str, namespace: str, resource_id: str) -> str:
    return f"namespaces/{namespace}/{COLLECTIONS[kind]}/{resource_id}"


def job_name(namespace: str, job_id: str) -> str:
    return format_name("job", namespace, job_id)


def schedule_name(namespace: str, schedule_id: str) -> str:
    return format_name("schedule", namespace, schedule_id)


def calendar_name(namespace: str, calendar_id: str) -> str:
    return format_name("calendar", namespace, calendar_id)


def execution_name(namespace: str, execution_id: str) -> str:
    return format_name("execution", namespace, execution_id)


def key_name(key_id: str) -> str:
    return f"{KEYS}/{key_id}"


def parse_key_name(value: str, field: str = "name") -> str:
    """`keys/{key}` -> the key id."""
    collection, _, key_id = value.partition("/")
    if collection != KEYS or not key_id or "/" in key_id:
        raise InvalidArgument.field(field, f"{value!r} is not a key name of the form keys/{{key}}")
    return key_id


def parent_name(namespace: str) -> str:
    return f"namespaces/{namespace}"
