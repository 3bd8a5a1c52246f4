"""AIP-158 paging: page sizes and opaque page tokens bound to the request's filters."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from cronwire_server.errors import InvalidArgument
from cronwire_server.model import Page

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def _fingerprint(filters: object) -> str:
    # A token only continues the listing it was made for.
    return hashlib.sha256(json.dumps(filters, sort_keys=True, default=str).encode()).hexdigest()[:16]


def encode_token(after: str | None, filters: object) -> str:
    """The `next_page_token` for a listing that continues after `after`; empty at the end."""
    if after is None:
        return ""
    raw = json.dumps({"a": after, "f": _fingerprint(filters)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def page_from_request(
    page_size: int, page_token: str, filters: object, default_size: int = DEFAULT_PAGE_SIZE
) -> Page:
    """Validate `page_size` and `page_token`; raise InvalidArgument naming the field."""
    if page_size < 0:
        raise InvalidArgument.field("page_size", f"must not be negative, got {page_size}")
    size = min(page_size or default_size, MAX_PAGE_SIZE)
    if not page_token:
        return Page(size=size)
    try:
        padded = page_token + "=" * (-len(page_token) % 4)
        decoded = json.loads(base64.urlsafe_b64decode(padded.encode()))
        after, fingerprint = decoded["a"], decoded["f"]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise InvalidArgument.field("page_token", "is not a token this server issued") from exc
    if fingerprint != _fingerprint(filters) or not isinstance(after, str):
        raise InvalidArgument.field("page_token", "was issued for a request with other filters")
    return Page(size=size, after=after)
