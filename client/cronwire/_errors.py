"""The SDK's exception root and the mapping from gRPC statuses to it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import grpc
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"
ERROR_DOMAIN = "cronwire.v1"


class FieldViolation(NamedTuple):
    """One bad field of a request: its path (`job.parameters.argv`) and what is wrong with it."""

    field: str
    description: str


class CronwireError(Exception):
    """Root of every error the SDK raises for a failed call.

    Attributes:
        code: the gRPC status code (`grpc.StatusCode`).
        message: the server's message, for people.
        reason: the stable UPPER_SNAKE reason of the error (`JOB_NOT_FOUND`,
            `ETAG_MISMATCH`, ...), from the status's `google.rpc.ErrorInfo`;
            empty when the server sent none.
        field_violations: the bad fields of the request (from
            `google.rpc.BadRequest`), empty for errors that are not about a field.
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        field_violations: Iterable[FieldViolation] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.field_violations: list[FieldViolation] = list(field_violations)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(code={self.code.name}, reason={self.reason!r}, message={self.message!r})"


class NotFound(CronwireError):
    """The named resource does not exist (NOT_FOUND)."""


class AlreadyExists(CronwireError):
    """A resource with that name exists already (ALREADY_EXISTS)."""


class InvalidArgument(CronwireError):
    """The request is malformed (INVALID_ARGUMENT); `field_violations` names each bad field."""


class Conflict(CronwireError):
    """The resource changed since its etag was read (ABORTED): read it again and retry."""


class FailedPrecondition(CronwireError):
    """The resource is not in a state that allows the request (FAILED_PRECONDITION)."""


class PermissionDenied(CronwireError):
    """The caller may not do this (PERMISSION_DENIED)."""


class Unauthenticated(CronwireError):
    """The call carried no valid credentials (UNAUTHENTICATED)."""


class ResourceExhausted(CronwireError):
    """A quota or a size limit was hit (RESOURCE_EXHAUSTED)."""


class OutOfRange(CronwireError):
    """A position beyond what the server holds (OUT_OF_RANGE), e.g. events no longer retained."""


class Unavailable(CronwireError):
    """The server could not be reached or could not reach its database (UNAVAILABLE)."""


class Unimplemented(CronwireError):
    """The server does not implement this call (UNIMPLEMENTED)."""


class DeadlineExceeded(CronwireError):
    """The call, or a wait for an execution, ran past its deadline (DEADLINE_EXCEEDED)."""


_BY_CODE: dict[grpc.StatusCode, type[CronwireError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def _details(metadata: Any) -> tuple[str, list[FieldViolation]]:
    """The ErrorInfo reason and BadRequest violations in a call's trailing metadata."""
    raw = next((value for key, value in (metadata or ()) if key == STATUS_DETAILS_KEY), None)
    if not isinstance(raw, bytes):
        return "", []
    try:
        status = status_pb2.Status.FromString(raw)
    except Exception:  # a malformed trailer must not hide the error itself
        return "", []
    reason = ""
    violations: list[FieldViolation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
    return reason, violations


def from_rpc_error(error: grpc.RpcError) -> CronwireError:
    """The typed SDK error for a failed gRPC call (sync or grpc.aio)."""
    code_of = getattr(error, "code", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details_of = getattr(error, "details", None)
    message = (details_of() if callable(details_of) else None) or code.name
    trailers_of = getattr(error, "trailing_metadata", None)
    reason, violations = _details(trailers_of() if callable(trailers_of) else None)
    cls = _BY_CODE.get(code, CronwireError)
    return cls(str(message), code=code, reason=reason, field_violations=violations)
