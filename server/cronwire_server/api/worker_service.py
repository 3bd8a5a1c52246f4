"""cronwire.v1.WorkerService: remote workers' streams, converted to and from `remote_workers`.

One Connect call is one `Session`. The call reads the worker's messages and writes what the
session has to send, in one task: each turn waits for whichever comes first (a message from the
worker, one for it, or the session's end). Messages are handled in order; results are recorded
beside the next messages, at most `remote_workers.MAX_RECORDING` of a stream at once, so a
worker that sends faster than the database records is slowed down by its own stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from cronwire.v1 import worker_pb2, worker_service_pb2_grpc
from cronwire.v1 import worker_service_pb2 as pb
from cronwire_server.api import fields
from cronwire_server.api.convert import dict_to_struct, set_duration, set_time, struct_to_dict
from cronwire_server.api.status import server_streaming
from cronwire_server.auth import principal
from cronwire_server.auth.keys import Role
from cronwire_server.core.errors import (
    CronwireError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
)
from cronwire_server.core.names import check_id, execution_name, job_name
from cronwire_server.executors.kinds import QUEUE_NAME_PATTERN
from cronwire_server.remote_workers import (
    Assignment,
    CancelRun,
    Failure,
    Outgoing,
    Refusal,
    RemoteWorkers,
    Session,
    heartbeat_interval,
)

Context = grpc.aio.ServicerContext[Any, Any]

# The first message must come within this many seconds.
HELLO_WITHIN = 10.0
MAX_IDENTITY = 128
MAX_AGENT = 128
MAX_QUEUES = 32
MAX_TASKS = 256
MAX_SLOTS = 1000
MAX_LEASES = 1000
MAX_OUTPUT_TEXT = 64 * 1024
MAX_RESULT_BYTES = 256 * 1024
MAX_ERROR_TYPE = 256
MAX_ERROR_MESSAGE = 4 * 1024
MAX_DETAILS_BYTES = 64 * 1024
MAX_TOKEN = 128
MAX_NAME = 512
# Every message of a worker, at most (the gRPC receive limit of the server may be larger).
MAX_MESSAGE_BYTES = 512 * 1024

_IDENTITY = re.compile(r"^[\x21-\x7e]{1,128}$")
_QUEUE = re.compile(QUEUE_NAME_PATTERN)
_CODES = {"FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION.value[0]}
_INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
_CLOSED: dict[str, type[CronwireError]] = {
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
}


def _names(values: Any, field: str, most: int, *, required: bool) -> tuple[str, ...]:
    names = tuple(values)
    if required and not names:
        raise InvalidArgument.field(field, "required: at least one")
    if len(names) > most:
        raise InvalidArgument.field(field, f"at most {most} names")
    for index, name in enumerate(names):
        if not _QUEUE.match(name):
            raise InvalidArgument.field(
                f"{field}[{index}]",
                f"{name[:80]!r} is not a valid name: a letter or digit, then letters, digits, "
                "'.', '_' or '-'; at most 63 characters",
            )
    return names


def _slots(value: int, field: str) -> int:
    if not 0 <= value <= MAX_SLOTS:
        raise InvalidArgument.field(field, f"must be 0 to {MAX_SLOTS}")
    return value


def _hello_scope(hello: worker_pb2.WorkerHello) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """The hello's queues and namespaces (None: every one), checked against the caller's key."""
    queues = _names(hello.queues, "hello.queues", MAX_QUEUES, required=True)
    namespaces = tuple(check_id(n, f"hello.namespaces[{i}]") for i, n in enumerate(hello.namespaces))
    key = principal.current().key
    if key is None:  # auth off: everything is open
        return queues, namespaces or None
    if key.role is not Role.WORKER:
        raise PermissionDenied(f"key {key.name} has role {key.role.name.lower()}; only worker keys take work")
    if not key.serves(queues):
        raise PermissionDenied(
            f"key {key.name} may take work only from the queues {', '.join(key.queues)}; "
            f"asked for {', '.join(queues)}"
        )
    if namespaces:
        if not key.covers(namespaces):
            raise PermissionDenied(
                f"key {key.name} may take work only in the namespaces {', '.join(key.namespaces)}"
            )
        return queues, namespaces
    return queues, None if key.all_namespaces else key.namespaces


def _session_of(workers: RemoteWorkers, hello: worker_pb2.WorkerHello) -> Session:
    if not _IDENTITY.match(hello.identity):
        raise InvalidArgument.field(
            "hello.identity", f"required: 1 to {MAX_IDENTITY} printable ASCII characters, no spaces"
        )
    if len(hello.agent) > MAX_AGENT:
        raise InvalidArgument.field("hello.agent", f"at most {MAX_AGENT} characters")
    queues, namespaces = _hello_scope(hello)
    tasks = _names(hello.tasks, "hello.tasks", MAX_TASKS, required=False)
    return workers.open(
        identity=hello.identity,
        queues=queues,
        tasks=tasks,
        namespaces=namespaces,
        free=_slots(hello.free_slots, "hello.free_slots"),
        agent=hello.agent,
    )


def _lease(execution: str, token: str, field: str) -> tuple[str, str]:
    if not execution or len(execution) > MAX_NAME:
        raise InvalidArgument.field(f"{field}.execution", "required: the execution's resource name")
    if not token or len(token) > MAX_TOKEN:
        raise InvalidArgument.field(f"{field}.lease_token", "required: the assignment's lease_token")
    return execution, token


def _failure(message: worker_pb2.TaskFailure) -> Failure:
    if not message.type or len(message.type) > MAX_ERROR_TYPE:
        raise InvalidArgument.field("result.failure.type", f"required: at most {MAX_ERROR_TYPE} characters")
    if len(message.message) > MAX_ERROR_MESSAGE:
        raise InvalidArgument.field("result.failure.message", f"at most {MAX_ERROR_MESSAGE} characters")
    if message.details.ByteSize() > MAX_DETAILS_BYTES:
        raise InvalidArgument.field("result.failure.details", f"at most {MAX_DETAILS_BYTES} bytes")
    details = _converted(message.details, struct_to_dict) if message.HasField("details") else None
    return Failure(message.type, message.message, details, message.retryable)


def _success(message: worker_pb2.TaskSuccess) -> Any:
    if not message.HasField("result"):
        return None
    if message.result.ByteSize() > MAX_RESULT_BYTES:
        raise InvalidArgument.field("result.success.result", f"at most {MAX_RESULT_BYTES} bytes")
    return _converted(message.result, json_format.MessageToDict)


M = TypeVar("M", bound=Message)


def _converted(message: M, convert: Callable[[M], Any]) -> Any:
    """`convert(message)` of a task's JSON value (Value or Struct), with NaN and the infinities,
    which JSON has not (protobuf's JSON conversion refuses them), as null."""
    try:
        return convert(message)
    except ValueError:
        copy = type(message)()
        copy.CopyFrom(message)
        _null_non_finite(copy)
        return convert(copy)


def _null_non_finite(message: Any) -> None:
    kind = message.DESCRIPTOR.full_name
    if kind == "google.protobuf.Struct":
        for value in message.fields.values():
            _null_non_finite(value)
    elif kind == "google.protobuf.ListValue":
        for value in message.values:
            _null_non_finite(value)
    elif message.WhichOneof("kind") == "number_value" and not math.isfinite(message.number_value):
        message.null_value = struct_pb2.NULL_VALUE
    elif message.WhichOneof("kind") in ("struct_value", "list_value"):
        _null_non_finite(getattr(message, message.WhichOneof("kind")))


# Messages carrying what job code produced (output, a result or a failure): a value no database
# holds in them is stored as the local runners' is (see `storable_outcome`), not refused, which
# would end the worker's stream and every run it holds.
_JOB_PRODUCED = frozenset({"output", "result"})


async def handle(workers: RemoteWorkers, session: Session, request: pb.ConnectRequest) -> None:
    """One message of the worker, after its hello."""
    if request.ByteSize() > MAX_MESSAGE_BYTES:
        raise InvalidArgument.field("request", f"at most {MAX_MESSAGE_BYTES} bytes per message")
    kind = request.WhichOneof("message")
    if kind not in _JOB_PRODUCED:
        fields.refuse_unstorable(request)
    if kind == "slots":
        workers.set_free(session, _slots(request.slots.free_slots, "slots.free_slots"))
    elif kind == "heartbeat":
        leases = request.heartbeat.leases
        if len(leases) > MAX_LEASES:
            raise InvalidArgument.field("heartbeat.leases", f"at most {MAX_LEASES}")
        await workers.heartbeat(
            session,
            [_lease(h.execution, h.lease_token, f"heartbeat.leases[{i}]") for i, h in enumerate(leases)],
        )
    elif kind == "output":
        execution, token = _lease(request.output.execution, request.output.lease_token, "output")
        if len(request.output.text) > MAX_OUTPUT_TEXT:
            raise InvalidArgument.field("output.text", f"at most {MAX_OUTPUT_TEXT} characters per chunk")
        await workers.output(session, execution, token, request.output.text)
    elif kind == "result":
        result = request.result
        execution, token = _lease(result.execution, result.lease_token, "result")
        outcome = result.WhichOneof("outcome")
        if outcome == "success":
            await workers.result(session, execution, token, success=_success(result.success))
        elif outcome == "failure":
            await workers.result(session, execution, token, failure=_failure(result.failure))
        else:
            raise InvalidArgument.field("result.outcome", "required: success or failure")
    elif kind == "release":
        execution, token = _lease(request.release.execution, request.release.lease_token, "release")
        await workers.release(session, execution, token)
    elif kind == "hello":
        raise InvalidArgument.field("hello", "only the first message of a stream may be a hello")
    else:
        raise InvalidArgument.field(
            "message", "required: one of hello, slots, heartbeat, output, result, release"
        )


def to_pb(message: Outgoing) -> pb.ConnectResponse:
    if isinstance(message, Assignment):
        execution = message.execution
        assignment = worker_pb2.ExecutionAssignment(
            execution=execution_name(execution.namespace, execution.id),
            job=job_name(execution.namespace, execution.job_id),
            task=message.task,
            queue=message.queue,
            attempt=execution.attempt,
            lease_token=message.claim.token,
        )
        dict_to_struct(dict(execution.arguments), assignment.arguments)
        set_time(assignment.scheduled_time, execution.scheduled_time)
        if message.deadline is not None:
            set_time(assignment.deadline, message.deadline)
        return pb.ConnectResponse(assignment=assignment)
    if isinstance(message, CancelRun):
        return pb.ConnectResponse(
            cancel=worker_pb2.ExecutionCancel(
                execution=message.execution, lease_token=message.token, reason=message.reason
            )
        )
    assert isinstance(message, Refusal)
    return pb.ConnectResponse(
        refused=worker_pb2.LeaseRefused(
            execution=message.execution,
            lease_token=message.token,
            code=_CODES.get(message.code, _INVALID),
            reason=message.reason,
            message=message.message,
        )
    )


class WorkerService(worker_service_pb2_grpc.WorkerServiceServicer):
    def __init__(self, workers: RemoteWorkers) -> None:
        self._workers = workers

    @server_streaming
    async def Connect(
        self, request_iterator: AsyncIterator[pb.ConnectRequest], context: Context
    ) -> AsyncIterator[pb.ConnectResponse]:
        requests = aiter(request_iterator)
        try:
            async with asyncio.timeout(HELLO_WITHIN):
                first = await anext(requests)
        except TimeoutError:
            raise InvalidArgument.field(
                "hello", f"required: the first message, within {HELLO_WITHIN:g}s"
            ) from None
        except StopAsyncIteration:
            return
        if first.WhichOneof("message") != "hello":
            raise InvalidArgument.field("hello", "required: the first message must be a hello")
        fields.refuse_unstorable(first)
        session = _session_of(self._workers, first.hello)
        welcome = worker_pb2.WorkerWelcome(
            session=session.id,
            max_in_flight=session.max_in_flight,
            max_message_bytes=MAX_MESSAGE_BYTES,
        )
        set_duration(welcome.heartbeat_interval, heartbeat_interval(self._workers.lease))
        set_duration(welcome.lease_duration, self._workers.lease)
        reading: asyncio.Future[pb.ConnectRequest] | None = None
        sending: asyncio.Future[Outgoing] | None = None
        closed = asyncio.ensure_future(session.closed_event.wait())
        try:
            yield pb.ConnectResponse(welcome=welcome)
            while True:
                if reading is None:
                    reading = asyncio.ensure_future(anext(requests))
                if sending is None:
                    sending = asyncio.ensure_future(session.outbox.get())
                waiting: set[asyncio.Future[Any]] = {reading, sending, closed}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if sending.done():
                    yield to_pb(sending.result())
                    sending = None
                    while not session.outbox.empty():
                        yield to_pb(session.outbox.get_nowait())
                if session.closed is not None:
                    error = _CLOSED.get(session.closed.code, FailedPrecondition)
                    raise error(session.closed.message)
                if reading.done():
                    try:
                        request = reading.result()
                    except StopAsyncIteration:
                        return
                    reading = None
                    await handle(self._workers, session, request)
        finally:
            for pending in (reading, sending, closed):
                if pending is None:
                    continue
                if not pending.done():
                    pending.cancel()
                # Awaited (or its outcome taken) so that no error of it goes unretrieved.
                with contextlib.suppress(BaseException):
                    await pending
            self._workers.close(session)
