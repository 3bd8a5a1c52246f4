"""cronwire.v1.ExecutionService. Executions come with the scheduler core; until then every
RPC answers UNIMPLEMENTED."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from cronwire.v1 import execution_service_pb2 as pb
from cronwire.v1 import execution_service_pb2_grpc
from cronwire_server.api.status import unimplemented

Context = grpc.aio.ServicerContext[Any, Any]


class ExecutionService(execution_service_pb2_grpc.ExecutionServiceServicer):
    async def GetExecution(
        self, request: pb.GetExecutionRequest, context: Context
    ) -> pb.GetExecutionResponse:
        await unimplemented(context, "GetExecution")

    async def ListExecutions(
        self, request: pb.ListExecutionsRequest, context: Context
    ) -> pb.ListExecutionsResponse:
        await unimplemented(context, "ListExecutions")

    async def CancelExecution(
        self, request: pb.CancelExecutionRequest, context: Context
    ) -> pb.CancelExecutionResponse:
        await unimplemented(context, "CancelExecution")

    async def StreamExecutionLogs(
        self, request: pb.StreamExecutionLogsRequest, context: Context
    ) -> AsyncIterator[pb.StreamExecutionLogsResponse]:
        await unimplemented(context, "StreamExecutionLogs")
        yield pb.StreamExecutionLogsResponse()  # pragma: no cover - makes this a generator
