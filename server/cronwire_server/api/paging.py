"""AIP-158 paging: page sizes and opaque page tokens bound to the request's filters.

A token is signed (HMAC-SHA256) with a secret every replica reads from the database, so a
token the server did not issue — forged, edited, or made for other filters — is refused as
INVALID_ARGUMENT before its cursor reaches a query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets

from cronwire_server.core.errors import InvalidArgument
from cronwire_server.core.model import Page

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
SIGNATURE_BYTES = 16

# Until the server sets the shared one (`use_secret`), tokens are signed with a key of this
# process alone: still unforgeable, only not good on other replicas.
_secret = secrets.token_bytes(32)


def use_secret(secret: bytes) -> None:
    """Sign and check tokens with `secret` (the database's, shared by every replica)."""
    global _secret
    _secret = secret


def _fingerprint(filters: object) -> str:
    # A token only continues the listing it was made for.
    return hashlib.sha256(json.dumps(filters, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode((text + "=" * (-len(text) % 4)).encode())


def _signature(payload: bytes) -> bytes:
    return hmac.new(_secret, payload, hashlib.sha256).digest()[:SIGNATURE_BYTES]


def encode_token(after: str | None, filters: object) -> str:
    """The `next_page_token` for a listing that continues after `after`; empty at the end."""
    if after is None:
        return ""
    payload = json.dumps({"a": after, "f": _fingerprint(filters)}).encode()
    return f"{_b64(payload)}.{_b64(_signature(payload))}"


def page_from_request(
    page_size: int, page_token: str, filters: object, default_size: int = DEFAULT_PAGE_SIZE
) -> Page:
    """Validate `page_size` and `page_token`; raise InvalidArgument naming the field."""
    if page_size < 0:
        raise InvalidArgument.field("page_size", f"must not be negative, got {page_size}")
    size = min(page_size or default_size, MAX_PAGE_SIZE)
    if not page_token:
        return Page(size=size)
    not_issued = InvalidArgument.field("page_token", "is not a token this server issued")
    try:
        encoded, _, signature = page_token.partition(".")
        payload = _unb64(encoded)
        if not hmac.compare_digest(_unb64(signature), _signature(payload)):
            raise not_issued
        decoded = json.loads(payload)
        after, fingerprint = decoded["a"], decoded["f"]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise not_issued from exc
    if fingerprint != _fingerprint(filters) or not isinstance(after, str):
        raise InvalidArgument.field("page_token", "was issued for a request with other filters")
    return Page(size=size, after=after)
