"""Names from requests, parsed and checked against the caller's namespaces in one step.

Servicers parse every name a request carries through here, so a name in a namespace the
caller's key does not cover is NOT_FOUND, exactly as if nothing were there.
"""

from __future__ import annotations

from cronwire_server.auth import principal
from cronwire_server.core import names


def name(value: str, kind: str, field: str = "name") -> names.ResourceName:
    """`namespaces/{namespace}/{collection}/{id}`, if the caller may see that namespace."""
    parsed = names.parse_name(value, kind, field)
    principal.require_namespace(parsed.namespace, kind, names.format_name(kind, parsed.namespace, parsed.id))
    return parsed


def parent(value: str, field: str = "parent") -> str:
    """`namespaces/{namespace}` -> the namespace, if the caller may see it."""
    namespace = names.parse_parent(value, field)
    principal.require_namespace(namespace, "namespace", names.parent_name(namespace))
    return namespace
