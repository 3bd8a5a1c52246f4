"""Helpers for request fields shared by the servicers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from cronwire_server.errors import FieldViolation, InvalidArgument

MAX_REQUEST_ID = 128


@contextmanager
def under(prefix: str) -> Iterator[None]:
    """Report field violations raised inside as fields of the request's `prefix` message."""
    try:
        yield
    except InvalidArgument as error:
        raise error.under(prefix) from None


def request_id(value: str) -> str:
    if len(value) > MAX_REQUEST_ID:
        raise InvalidArgument.field("request_id", f"must be at most {MAX_REQUEST_ID} characters")
    return value


def required(present: bool, field: str) -> None:
    if not present:
        raise InvalidArgument.field(field, "is required")


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_JSON_MESSAGES = ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue")
NUL_RULE = "must not contain NUL characters (U+0000)"


def refuse_nul(request: Message) -> None:
    """InvalidArgument naming every string of `request` that holds a NUL character.

    PostgreSQL cannot store one in text or JSON, and no program argument or header can
    carry one: refused here for every request, the same on every backend.
    """
    # Fast path: no string with a NUL can serialise without a zero byte.
    if b"\x00" not in request.SerializeToString():
        return
    violations = [FieldViolation(path, NUL_RULE) for path in _nul_paths(request, "")]
    if violations:
        raise InvalidArgument(violations)


def _nul_paths(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, str):
        if "\x00" in value:
            yield path
    elif isinstance(value, Message):
        if value.DESCRIPTOR.full_name in _JSON_MESSAGES:
            yield from _nul_paths(json_format.MessageToDict(value), path)
            return
        for field, item in value.ListFields():
            inner = f"{path}.{field.name}" if path else field.name
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                for key, element in item.items():  # named like labels['team']
                    if isinstance(key, str) and "\x00" in key:
                        yield f"{inner}[{key!r}]"
                    yield from _nul_paths(element, f"{inner}[{key!r}]")
            elif field.is_repeated:
                for index, element in enumerate(item):
                    yield from _nul_paths(element, f"{inner}[{index}]")
            else:
                yield from _nul_paths(item, inner)
    elif isinstance(value, dict):  # JSON, named like parameters.env["X-KEY"]
        for key, item in value.items():
            inner = f"{path}.{key}" if _IDENTIFIER.fullmatch(key) else f"{path}[{json.dumps(key)}]"
            if "\x00" in key:
                yield inner
            yield from _nul_paths(item, inner)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _nul_paths(item, f"{path}[{index}]")
