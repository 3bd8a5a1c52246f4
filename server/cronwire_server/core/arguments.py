"""A job's `arguments_schema`: the JSON Schema (draft 2020-12) its runs' arguments must match, so
that a job is a template its callers fill in.

Arguments are checked where they enter: RunJob, CreateSchedule, UpdateSchedule and
BackfillSchedule (a schedule's stored arguments against the job's schema of the day). Before the
check, each top-level property the schema declares with a `default` and the arguments lack is
filled in; the filled arguments are what is stored and what the run gets.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from jsonschema import Draft202012Validator, SchemaError

from cronwire_server.core.errors import FieldViolation, InvalidArgument
from cronwire_server.core.model import JsonObject
from cronwire_server.core.parameter_paths import schema_violations

__all__ = ["check_schema", "checked_arguments"]

# Compiled validators, by the schema's canonical JSON (schemas are few, and reused by every run).
_CACHED = 256


def check_schema(schema: JsonObject | None, field: str = "arguments_schema") -> None:
    """INVALID_ARGUMENT naming `field` unless `schema` is a valid JSON Schema for an object."""
    if schema is None:
        return
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        where = "".join(f"[{json.dumps(p)}]" for p in error.absolute_path)
        raise InvalidArgument.field(f"{field}{where}", f"not a valid JSON Schema: {error.message}") from None
    kind = schema.get("type")
    if kind is not None and kind != "object":
        raise InvalidArgument.field(f"{field}.type", 'arguments are an object: "object" or no type')


def checked_arguments(
    schema: JsonObject | None, arguments: JsonObject, field: str = "arguments"
) -> JsonObject:
    """`arguments` with the schema's top-level defaults filled in; INVALID_ARGUMENT naming each
    argument that does not match (`arguments.region`, `arguments.hosts[2]`)."""
    if not schema:
        return arguments
    filled = dict(arguments)
    properties = schema.get("properties")
    if isinstance(properties, dict):
        for name, declared in properties.items():
            if name not in filled and isinstance(declared, dict) and "default" in declared:
                filled[name] = copy.deepcopy(declared["default"])
    validator = _validator(json.dumps(schema, sort_keys=True))
    errors = sorted(validator.iter_errors(filled), key=lambda e: list(map(str, e.absolute_path)))
    violations: list[FieldViolation] = [
        violation for error in errors for violation in schema_violations(error, field, "argument")
    ]
    if violations:
        raise InvalidArgument(violations)
    return filled


@functools.lru_cache(maxsize=_CACHED)
def _validator(canonical: str) -> Any:
    return Draft202012Validator(json.loads(canonical))
