"""Helpers for request fields shared by the servicers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cronwire_server.errors import InvalidArgument

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
