"""One place maps domain errors to gRPC statuses with google.rpc details."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from cronwire_server.api import fields
from cronwire_server.core.errors import (
    AlreadyExists,
    CalendarsChanged,
    CronwireError,
    DeadlineExceeded,
    EtagMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    StorageUnavailable,
    Unauthenticated,
)

log = logging.getLogger(__name__)

ERROR_DOMAIN = "cronwire.v1"

_CODES: list[tuple[type[CronwireError], int]] = [
    (InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (NotFound, code_pb2.NOT_FOUND),
    (AlreadyExists, code_pb2.ALREADY_EXISTS),
    (EtagMismatch, code_pb2.ABORTED),
    (CalendarsChanged, code_pb2.ABORTED),
    (FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (StorageUnavailable, code_pb2.UNAVAILABLE),
    (ResourceExhausted, code_pb2.RESOURCE_EXHAUSTED),
    (OutOfRange, code_pb2.OUT_OF_RANGE),
    (Unauthenticated, code_pb2.UNAUTHENTICATED),
    (PermissionDenied, code_pb2.PERMISSION_DENIED),
    (DeadlineExceeded, code_pb2.DEADLINE_EXCEEDED),
]


# A status travels in trailing metadata, which clients cap (16 KiB by default): an error that
# quotes a huge value from the request must stay small enough to arrive as itself.
MAX_MESSAGE = 1024
MAX_VIOLATIONS = 10
MAX_VIOLATION_TEXT = 240


def _bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status(error: CronwireError) -> grpc.Status:
    """The gRPC status for a domain error: its code, message, ErrorInfo and BadRequest."""
    code = next((c for cls, c in _CODES if isinstance(error, cls)), code_pb2.INTERNAL)
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN))]
    if isinstance(error, InvalidArgument):
        violations = [
            error_details_pb2.BadRequest.FieldViolation(
                field=_bounded(v.field, MAX_VIOLATION_TEXT),
                description=_bounded(v.description, MAX_VIOLATION_TEXT),
            )
            for v in error.violations[:MAX_VIOLATIONS]
        ]
        details.append(_pack(error_details_pb2.BadRequest(field_violations=violations)))
    if error.retry_delay is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(max(int(error.retry_delay * 1e9), 1_000_000))
        details.append(_pack(retry))
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code, message=_bounded(error.message, MAX_MESSAGE), details=details)
    )
    return status


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: CronwireError) -> NoReturn:
    # grpc-stubs lacks the aio context's abort_with_status.
    await context.abort_with_status(to_status(error))  # type: ignore[attr-defined]
    raise AssertionError("abort_with_status returned")  # pragma: no cover - it always raises


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")
Ctx = grpc.aio.ServicerContext[Any, Any]


def _unexpected(where: str) -> CronwireError:
    """INTERNAL for a bug: logged with its traceback here, while the caller learns nothing of
    the server's internals (SQL, paths, values)."""
    log.exception("unexpected error in %s", where)
    return CronwireError("internal error; the server's log has the details")


def _check(request: object) -> None:
    """What every request must satisfy before any servicer sees it."""
    if isinstance(request, Message):
        fields.refuse_unstorable(request)


def unary(
    method: Callable[[Self, Req, Ctx], Awaitable[Resp]],
) -> Callable[[Self, Req, Ctx], Awaitable[Resp]]:
    """Wrap a unary servicer method so domain errors become statuses with details."""

    @functools.wraps(method)
    async def wrapper(self: Self, request: Req, context: Ctx) -> Resp:
        try:
            _check(request)
            return await method(self, request, context)
        except CronwireError as error:
            await abort(context, error)
        except grpc.aio.AbortError:
            raise
        except Exception:
            await abort(context, _unexpected(method.__qualname__))

    return wrapper


def server_streaming(
    method: Callable[[Self, Req, Ctx], AsyncIterator[Resp]],
) -> Callable[[Self, Req, Ctx], AsyncIterator[Resp]]:
    """Wrap a server-streaming servicer method the same way."""

    @functools.wraps(method)
    async def wrapper(self: Self, request: Req, context: Ctx) -> AsyncIterator[Resp]:
        try:
            _check(request)
            async for response in method(self, request, context):
                yield response
        except CronwireError as error:
            await abort(context, error)
        except grpc.aio.AbortError:
            raise
        except Exception:
            await abort(context, _unexpected(method.__qualname__))

    return wrapper
