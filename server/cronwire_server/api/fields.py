"""Helpers for request fields shared by the servicers."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from google.protobuf.message import Message

from cronwire_server.core.errors import FieldViolation, InvalidArgument

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
NUL_RULE = "must not contain NUL characters (U+0000)"
# The fast path: a string with a NUL serialises with a zero byte, and a NaN or infinite double
# (little-endian, exponent all ones) with a byte >= 0xF0 followed by 0x7F or 0xFF. Requests
# without either (most) are not walked.
_MAYBE_UNSTORABLE = re.compile(rb"\x00|[\xf0-\xff][\x7f\xff]")
FINITE_RULE = "must be a finite number (JSON has no NaN or Infinity)"


def refuse_unstorable(request: Message) -> None:
    """InvalidArgument naming every value of `request` no backend can store: a string holding a
    NUL character (PostgreSQL cannot store one in text or JSON, and no program argument or header
    can carry one), and NaN or an infinity in a JSON value (Struct parameters and arguments).
    Checked here for every request, so that it is the same on every backend.
    """
    if not _MAYBE_UNSTORABLE.search(request.SerializeToString()):
        return
    violations = [FieldViolation(path, rule) for path, rule in _unstorable(request, "")]
    if violations:
        raise InvalidArgument(violations)


def _unstorable(message: Message, path: str) -> Iterator[tuple[str, str]]:
    kind = message.DESCRIPTOR.full_name
    if kind == "google.protobuf.Struct":
        yield from _json_object(message, path)
        return
    if kind == "google.protobuf.Value":
        yield from _json_value(message, path)
        return
    if kind == "google.protobuf.ListValue":
        for index, element in enumerate(message.values):  # type: ignore[attr-defined]
            yield from _json_value(element, f"{path}[{index}]")
        return
    for field, item in message.ListFields():
        inner = f"{path}.{field.name}" if path else field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, element in item.items():  # named like labels['team']
                yield from _text_or_message(key, f"{inner}[{key!r}]")
                yield from _text_or_message(element, f"{inner}[{key!r}]")
        elif field.is_repeated:
            for index, element in enumerate(item):
                yield from _text_or_message(element, f"{inner}[{index}]")
        else:
            yield from _text_or_message(item, inner)


def _text_or_message(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        if "\x00" in value:
            yield path, NUL_RULE
    elif isinstance(value, Message):
        yield from _unstorable(value, path)


def _json_object(struct: Any, path: str) -> Iterator[tuple[str, str]]:
    for key, value in struct.fields.items():  # named like parameters.env["X-KEY"]
        inner = f"{path}.{key}" if _IDENTIFIER.fullmatch(key) else f"{path}[{json.dumps(key)}]"
        if "\x00" in key:
            yield inner, NUL_RULE
        yield from _json_value(value, inner)


def _json_value(value: Any, path: str) -> Iterator[tuple[str, str]]:
    kind = value.WhichOneof("kind")
    if kind == "string_value" and "\x00" in value.string_value:
        yield path, NUL_RULE
    elif kind == "number_value" and not math.isfinite(value.number_value):
        yield path, FINITE_RULE
    elif kind == "struct_value":
        yield from _json_object(value.struct_value, path)
    elif kind == "list_value":
        for index, element in enumerate(value.list_value.values):
            yield from _json_value(element, f"{path}[{index}]")
