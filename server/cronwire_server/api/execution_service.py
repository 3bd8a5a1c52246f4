"""cronwire.v1.ExecutionService: protos in, domain calls, protos out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from cronwire.v1 import execution_service_pb2 as pb
from cronwire.v1 import execution_service_pb2_grpc
from cronwire_server.api import convert, scope
from cronwire_server.api.paging import encode_token, page_from_request
from cronwire_server.api.status import server_streaming, unary
from cronwire_server.core import names
from cronwire_server.core.errors import InvalidArgument
from cronwire_server.core.executions import ExecutionManager
from cronwire_server.storage.base import ExecutionFilter

Context = grpc.aio.ServicerContext[Any, Any]


def _filter(request: pb.ListExecutionsRequest, namespace: str) -> ExecutionFilter:
    def in_namespace(value: str, kind: str, field: str) -> str:
        if not value:
            return ""
        name = names.parse_name(value, kind, field)
        if name.namespace != namespace:
            raise InvalidArgument.field(field, f"must be a {kind} of the listed namespace")
        return name.id

    states = tuple(
        convert.execution_state_from_pb(state, f"states[{index}]")
        for index, state in enumerate(request.states)
    )
    return ExecutionFilter(
        job_id=in_namespace(request.job, "job", "job"),
        schedule_id=in_namespace(request.schedule, "schedule", "schedule"),
        states=states,
        scheduled_after=convert.optional_time(request, "start_time"),
        scheduled_before=convert.optional_time(request, "end_time"),
    )


class ExecutionService(execution_service_pb2_grpc.ExecutionServiceServicer):
    def __init__(self, executions: ExecutionManager) -> None:
        self._executions = executions

    @unary
    async def GetExecution(
        self, request: pb.GetExecutionRequest, context: Context
    ) -> pb.GetExecutionResponse:
        name = scope.name(request.name, "execution")
        execution = await self._executions.get(name.namespace, name.id)
        return pb.GetExecutionResponse(execution=convert.execution_to_pb(execution))

    @unary
    async def ListExecutions(
        self, request: pb.ListExecutionsRequest, context: Context
    ) -> pb.ListExecutionsResponse:
        namespace = scope.parent(request.parent)
        where = _filter(request, namespace)
        filters = {"namespace": namespace, "filter": repr(where)}
        page = page_from_request(request.page_size, request.page_token, filters)
        listing = await self._executions.list_page(namespace, page, where)
        return pb.ListExecutionsResponse(
            executions=[convert.execution_to_pb(e) for e in listing.items],
            next_page_token=encode_token(listing.next_after, filters),
        )

    @unary
    async def CancelExecution(
        self, request: pb.CancelExecutionRequest, context: Context
    ) -> pb.CancelExecutionResponse:
        name = scope.name(request.name, "execution")
        execution = await self._executions.cancel(name.namespace, name.id, request.reason)
        return pb.CancelExecutionResponse(execution=convert.execution_to_pb(execution))

    @server_streaming
    async def StreamExecutionLogs(
        self, request: pb.StreamExecutionLogsRequest, context: Context
    ) -> AsyncIterator[pb.StreamExecutionLogsResponse]:
        name = scope.name(request.name, "execution")
        if request.offset < 0:
            raise InvalidArgument.field("offset", "must not be negative")
        async for piece in self._executions.output(name.namespace, name.id, request.offset, request.follow):
            response = pb.StreamExecutionLogsResponse(data=piece.data, offset=piece.offset)
            convert.set_time(response.time, piece.time)
            if piece.final_state is not None:
                response.final_state = convert.execution_state_to_pb(piece.final_state)
            yield response
