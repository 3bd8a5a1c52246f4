"""How a violation names a job parameter (or a run's argument): the path a caller would write in
the request, and jsonschema's errors as such violations."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from jsonschema import ValidationError

from cronwire_server.core.errors import FieldViolation

__all__ = ["field_path", "schema_violations"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def field_path(path: Iterable[str | int], root: str = "parameters") -> str:
    """`parameters.argv[0]`, `parameters.env["X-KEY"]`: the request path of a parameter."""
    text = root
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            text += f".{part}"
        else:
            text += f"[{json.dumps(part)}]"
    return text


def schema_violations(
    error: ValidationError, root: str = "parameters", noun: str = "parameter"
) -> list[FieldViolation]:
    """jsonschema's `error` as violations of the fields under `root` it is about."""
    path = list(error.absolute_path)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    instance = error.instance
    # Name the property itself rather than the object that lacks or has it.
    if error.validator == "required" and isinstance(instance, Mapping):
        for name in schema.get("required", ()):
            if name not in instance and error.message == f"{name!r} is a required property":
                return [FieldViolation(field_path([*path, name], root), "required")]
    if (
        error.validator == "additionalProperties"
        and schema.get("additionalProperties") is False
        and isinstance(instance, Mapping)
    ):
        allowed = schema.get("properties", {})
        extra = [name for name in instance if name not in allowed]
        known = ", ".join(allowed)
        return [
            FieldViolation(field_path([*path, n], root), f"unknown {noun}; known: {known}") for n in extra
        ]
    message = schema.get("errorMessage")
    return [FieldViolation(field_path(path, root), message if isinstance(message, str) else error.message)]
