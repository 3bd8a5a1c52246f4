"""cronwire.v1.KeyService: protos in, key management calls, protos out."""

from __future__ import annotations

from typing import Any

import grpc

from cronwire.v1 import key_pb2, key_service_pb2, key_service_pb2_grpc
from cronwire_server.api import convert, fields
from cronwire_server.api.paging import encode_token, page_from_request
from cronwire_server.api.status import unary
from cronwire_server.auth import principal
from cronwire_server.auth.keys import ApiKey, Role
from cronwire_server.auth.manage import KeyManager
from cronwire_server.core.errors import InvalidArgument
from cronwire_server.core.names import parse_key_name

Context = grpc.aio.ServicerContext[Any, Any]


def key_to_pb(key: ApiKey) -> key_pb2.Key:
    message = key_pb2.Key(
        name=key.name,
        description=key.description,
        namespaces=list(key.namespaces),
        role=key_pb2.Role.ValueType(key.role.value),
        executors=list(key.executors),
        queues=list(key.queues),
    )
    convert.set_time(message.create_time, key.create_time)
    convert.set_time(message.revoke_time, key.revoke_time)
    return message


def _key_id(name: str, field: str = "name") -> str:
    return parse_key_name(name, field)


class KeyService(key_service_pb2_grpc.KeyServiceServicer):
    def __init__(self, keys: KeyManager) -> None:
        self._keys = keys

    @unary
    async def CreateKey(
        self, request: key_service_pb2.CreateKeyRequest, context: Context
    ) -> key_service_pb2.CreateKeyResponse:
        fields.required(request.HasField("key"), "key")
        if request.key.role not in (r.value for r in Role):
            raise InvalidArgument.field(
                "key.role", "must be ROLE_VIEWER, ROLE_EDITOR, ROLE_ADMIN or ROLE_WORKER"
            )
        with fields.under("key"):
            key, token = await self._keys.create(
                Role(request.key.role),
                list(request.key.namespaces),
                request.key.description,
                caller=principal.current(),
                executors=list(request.key.executors),
                queues=list(request.key.queues),
            )
        return key_service_pb2.CreateKeyResponse(key=key_to_pb(key), token=token)

    @unary
    async def GetKey(
        self, request: key_service_pb2.GetKeyRequest, context: Context
    ) -> key_service_pb2.GetKeyResponse:
        key = await self._keys.get(_key_id(request.name), caller=principal.current())
        return key_service_pb2.GetKeyResponse(key=key_to_pb(key))

    @unary
    async def ListKeys(
        self, request: key_service_pb2.ListKeysRequest, context: Context
    ) -> key_service_pb2.ListKeysResponse:
        page = page_from_request(request.page_size, request.page_token, {"keys": True})
        listing = await self._keys.list_page(page, caller=principal.current())
        return key_service_pb2.ListKeysResponse(
            keys=[key_to_pb(k) for k in listing.items],
            next_page_token=encode_token(listing.next_after, {"keys": True}),
        )

    @unary
    async def RevokeKey(
        self, request: key_service_pb2.RevokeKeyRequest, context: Context
    ) -> key_service_pb2.RevokeKeyResponse:
        key = await self._keys.revoke(_key_id(request.name), caller=principal.current())
        return key_service_pb2.RevokeKeyResponse(key=key_to_pb(key))
